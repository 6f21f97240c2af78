//! A record replays only into a type of the shape that wrote it (same `name =`, another
//! output type is an `Error::Codec`, never another value), and a record whose bytes were
//! corrupted is an `Error::Codec` too. Renaming or moving the output type keeps its records.

mod support;

use async_trait::async_trait;
use idem::store::{Claim, Output, Token};
use idem::{Fingerprint, Key, MemoryStore, Store, StoreError, idempotent};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{AppError, Calls};

/// The error a replay must give: a codec error whose message contains `needle`.
#[track_caller]
fn assert_codec_error<T: std::fmt::Debug>(result: Result<T, AppError>, needle: &str) {
    match result {
        Err(AppError::Idem(idem::Error::Codec(e))) => {
            assert!(e.to_string().contains(needle), "{e}")
        }
        other => panic!("expected Error::Codec ({needle}), got {other:?}"),
    }
}

const OTHER_SHAPE: &str = "another shape";

// Same `name =`: the second function replays the first one's records.
#[idempotent(key = key, store = store, name = "shapes-int")]
async fn signed(store: &MemoryStore, key: &str) -> Result<i64, AppError> {
    Ok(-5)
}

#[idempotent(key = key, store = store, name = "shapes-int")]
async fn unsigned(store: &MemoryStore, key: &str) -> Result<u64, AppError> {
    Ok(1)
}

#[idempotent(key = key, store = store, name = "shapes-int")]
async fn byte(store: &MemoryStore, key: &str) -> Result<u8, AppError> {
    Ok(1)
}

#[tokio::test]
async fn an_i64_record_does_not_replay_as_u64_or_u8() {
    let store = MemoryStore::new();
    assert_eq!(signed(&store, "k").await.unwrap(), -5);
    assert_codec_error(unsigned(&store, "k").await, OTHER_SHAPE);
    assert_codec_error(byte(&store, "k").await, OTHER_SHAPE);
    // The record is still the i64's.
    assert_eq!(signed(&store, "k").await.unwrap(), -5);
}

mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Transfer {
        pub(crate) debit: u64,
        pub(crate) credit: u64,
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// v1's fields, swapped.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Transfer {
        pub(crate) credit: u64,
        pub(crate) debit: u64,
    }
}

#[idempotent(key = key, store = store, name = "shapes-transfer")]
async fn transfer_v1(store: &MemoryStore, key: &str) -> Result<v1::Transfer, AppError> {
    Ok(v1::Transfer {
        debit: 100,
        credit: 7,
    })
}

#[idempotent(key = key, store = store, name = "shapes-transfer")]
async fn transfer_v2(store: &MemoryStore, key: &str) -> Result<v2::Transfer, AppError> {
    Ok(v2::Transfer {
        credit: 1,
        debit: 2,
    })
}

#[tokio::test]
async fn swapped_fields_do_not_replay_swapped() {
    let store = MemoryStore::new();
    transfer_v1(&store, "k").await.unwrap();
    assert_codec_error(transfer_v2(&store, "k").await, OTHER_SHAPE);
}

// A struct renamed and moved to another module, same fields: its records still replay.
mod before_the_move {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Receipt {
        pub(crate) id: u64,
        pub(crate) note: String,
        pub(crate) status: Status,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Status {
        Settled,
        Refunded { cents: u64 },
    }
}

mod after_the_move {
    pub(crate) mod billing {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub(crate) struct ChargeConfirmation {
            pub(crate) id: u64,
            pub(crate) note: String,
            pub(crate) status: State,
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub(crate) enum State {
            Settled,
            Refunded { cents: u64 },
        }
    }
}

#[idempotent(key = key, store = store, skip(calls), name = "shapes-receipt")]
async fn receipt_before(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
) -> Result<before_the_move::Receipt, AppError> {
    calls.hit();
    Ok(before_the_move::Receipt {
        id: 42,
        note: "note-1000-1".into(),
        status: before_the_move::Status::Refunded { cents: 250 },
    })
}

#[idempotent(key = key, store = store, skip(calls), name = "shapes-receipt")]
async fn receipt_after(
    store: &MemoryStore,
    calls: &Calls,
    key: &str,
) -> Result<after_the_move::billing::ChargeConfirmation, AppError> {
    calls.hit();
    Ok(after_the_move::billing::ChargeConfirmation {
        id: 0,
        note: String::new(),
        status: after_the_move::billing::State::Settled,
    })
}

#[tokio::test]
async fn a_renamed_and_moved_type_with_the_same_fields_still_replays() {
    use after_the_move::billing::{ChargeConfirmation, State};
    let store = MemoryStore::new();
    let calls = Calls::default();
    receipt_before(&store, &calls, "k").await.unwrap();
    let replayed = receipt_after(&store, &calls, "k").await.unwrap();
    assert_eq!(
        replayed,
        ChargeConfirmation {
            id: 42,
            note: "note-1000-1".into(),
            status: State::Refunded { cents: 250 },
        }
    );
    assert_eq!(calls.count(), 1, "the replay did not run the body");
}

// Cached errors carry the shape of `E`.
#[derive(Debug, Serialize, Deserialize)]
enum SignedError {
    Declined { code: i64 },
    Idem(String),
}

impl From<idem::Error> for SignedError {
    fn from(e: idem::Error) -> Self {
        SignedError::Idem(e.to_string())
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum UnsignedError {
    Declined { code: u64 },
    Idem(String),
}

impl From<idem::Error> for UnsignedError {
    fn from(e: idem::Error) -> Self {
        UnsignedError::Idem(e.to_string())
    }
}

#[idempotent(key = key, store = store, name = "shapes-errors", errors = cache)]
async fn fails_signed(store: &MemoryStore, key: &str) -> Result<u64, SignedError> {
    Err(SignedError::Declined { code: -5 })
}

#[idempotent(key = key, store = store, name = "shapes-errors", errors = cache)]
async fn fails_unsigned(store: &MemoryStore, key: &str) -> Result<u64, UnsignedError> {
    Err(UnsignedError::Declined { code: 1 })
}

#[tokio::test]
async fn a_cached_error_does_not_replay_as_another_error_type() {
    let store = MemoryStore::new();
    fails_signed(&store, "k").await.unwrap_err();
    match fails_unsigned(&store, "k").await {
        Err(UnsignedError::Idem(message)) => assert!(message.contains(OTHER_SHAPE), "{message}"),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

/// A store that flips one bit of every output it records: bit `flip` of the stored bytes.
struct Corrupting {
    inner: MemoryStore,
    flip: AtomicUsize,
}

#[async_trait]
impl Store for Corrupting {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, fingerprint, lease).await
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        self.inner.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        mut output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let bit = self.flip.load(Ordering::SeqCst);
        let mut bytes = output.bytes.to_vec();
        bytes[bit / 8] ^= 1 << (bit % 8);
        output.bytes = bytes.into();
        self.inner.complete(key, token, output, ttl).await
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
}

#[idempotent(key = key, store = store, skip(calls))]
async fn note(store: &Corrupting, calls: &Calls, key: &str) -> Result<String, AppError> {
    calls.hit();
    Ok("note-1000-1".into())
}

#[tokio::test]
async fn every_flipped_bit_of_a_stored_output_is_a_codec_error() {
    let honest = MemoryStore::new();
    let len = idem::codec::encode::<idem::codec::Bincode, _>(&"note-1000-1".to_string())
        .unwrap()
        .len();
    let store = Corrupting {
        inner: honest,
        flip: AtomicUsize::new(0),
    };
    let calls = Calls::default();
    for bit in 0..len * 8 {
        store.flip.store(bit, Ordering::SeqCst);
        let key = format!("k{bit}");
        assert_eq!(note(&store, &calls, &key).await.unwrap(), "note-1000-1");
        match note(&store, &calls, &key).await {
            Err(AppError::Idem(idem::Error::Codec(_))) => {}
            other => panic!("bit {bit} flipped: expected Error::Codec, got {other:?}"),
        }
    }
    assert_eq!(calls.count(), len * 8, "no replay ran the body");
}

// A generic function: one `static` shape cell in its body, two output types.
#[idempotent(key = key, store = store)]
async fn generic<T: Serialize + serde::de::DeserializeOwned + Default + Send>(
    store: &MemoryStore,
    key: &str,
) -> Result<T, AppError> {
    Ok(T::default())
}

#[tokio::test]
async fn each_instance_of_a_generic_function_checks_its_own_type() {
    let store = MemoryStore::new();
    assert_eq!(generic::<i64>(&store, "k").await.unwrap(), 0);
    assert_codec_error(generic::<u64>(&store, "k").await, OTHER_SHAPE);
    assert_eq!(generic::<u64>(&store, "other").await.unwrap(), 0);
    assert_eq!(generic::<u64>(&store, "other").await.unwrap(), 0);
    assert_codec_error(generic::<i64>(&store, "other").await, OTHER_SHAPE);
    assert_eq!(generic::<i64>(&store, "k").await.unwrap(), 0);
}
