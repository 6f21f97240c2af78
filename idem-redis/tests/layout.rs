//! Values under the prefix that the packed layout did not write: a record of the earlier
//! hash layout, and a foreign string. Each makes the claim a clean `StoreError` (never a
//! replay of something misread, never a panic), the fenced operations refuse them, and
//! nothing overwrites them: an earlier version's claim may still have its owner running.

mod support;

use idem::redis::redis;
use idem::store::{Outcome, Output, Token};
use idem::{Fingerprint, Key, Store, StoreError};
use std::time::Duration;

/// Every operation on `key` fails cleanly, and leaves the value as it found it.
async fn refused_everywhere(store: &idem::redis::RedisStore, key: &Key, what: &str) {
    let long = Duration::from_secs(600);
    let fp = Fingerprint::from_bytes([1; 32]);
    match store.claim(key, &fp, long).await {
        Err(StoreError::Backend {
            op: "claim",
            source,
        }) => {
            let text = source.to_string();
            assert!(text.contains(what), "{what}: the error says why: {text}");
        }
        other => panic!("{what}: expected a clean Backend error, got {other:?}"),
    }
    let token = Token::new(1);
    let out = Output {
        outcome: Outcome::Ok,
        bytes: b"x".to_vec().into(),
    };
    assert!(
        store.complete(key, token, out, long).await.is_err(),
        "{what}"
    );
    assert!(store.renew(key, token, long).await.is_err(), "{what}");
    assert!(store.release(key, token).await.is_err(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_layouts_and_foreign_values_are_clean_errors() {
    let Some(store) = support::store("layout").await else {
        return;
    };
    let mut admin = redis::Client::open(support::url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // A completed record as the hash layout wrote it: state, token, fingerprint, outcome,
    // output.
    let old = Key::new("layout", "hash").unwrap();
    let old_at = support::record_key(store.prefix(), &old);
    let fields: [(&str, &[u8]); 5] = [
        ("s", b"d"),
        ("t", b"12345"),
        ("f", &[1; 32]),
        ("o", b"ok"),
        ("v", b"recorded"),
    ];
    let _: () = redis::cmd("HSET")
        .arg(&old_at)
        .arg(&fields[..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg(&old_at)
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    refused_everywhere(&store, &old, "hash").await;
    let kept: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&old_at)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        kept.len(),
        fields.len(),
        "the hash record is left as it was"
    );

    // Someone else's text under the prefix, long enough to hold a header.
    let foreign = Key::new("layout", "text").unwrap();
    let foreign_at = support::record_key(store.prefix(), &foreign);
    let text = "not a record, but long enough to look like one's header".repeat(2);
    let _: () = redis::cmd("SET")
        .arg(&foreign_at)
        .arg(&text)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    refused_everywhere(&store, &foreign, "not an idem record").await;
    let kept: String = redis::cmd("GET")
        .arg(&foreign_at)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(kept, text, "the foreign value is left as it was");

    let _: () = redis::cmd("DEL")
        .arg(&old_at)
        .arg(&foreign_at)
        .query_async(&mut admin)
        .await
        .unwrap();
}
