//! [`Duplicates`]: fire the same call many times, at once or one after another, with the
//! retries a client would make, and collect every answer.

use std::time::Duration;

use futures_util::future::join_all;

/// Fires copies of one call and returns every result, in the order of the copies, so a
/// test can assert "one effect, N equal answers".
///
/// Concurrent copies run interleaved on the calling task (no spawning, so the call may
/// borrow the test's store and state): each runs until it awaits, then the next one gets
/// its turn — the overlap of duplicate requests racing a handler. With
/// [`retry_if`](Self::retry_if), a copy whose result says so is tried again after a pause,
/// as a client retries a conflict or a store that was down.
///
/// ```
/// # extern crate idem_core as idem;
/// use idem::testing::Duplicates;
/// use idem::{Fingerprint, Key, MemoryStore, Options, protocol::Idempotent};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// let charge = Idempotent::<u32, idem::Error>::new(Options::new("charge"));
/// let charges = AtomicU32::new(0);
/// let call = |_copy| async {
///     let key = Key::new("charge", "order-1")?;
///     let body = async {
///         tokio::time::sleep(Duration::from_millis(20)).await; // the copies overlap here
///         Ok(charges.fetch_add(1, Ordering::SeqCst) + 1)
///     };
///     charge.run(&store, key, Fingerprint::of(&500_u32)?, body).await
/// };
/// // Eight duplicates at once; a copy that finds the first in progress retries.
/// let answers = Duplicates::new(8)
///     .retry_if(10, Duration::from_millis(10), |r: &Result<u32, idem::Error>| {
///         matches!(r, Err(e) if e.is_conflict())
///     })
///     .concurrently(call)
///     .await;
/// assert!(answers.iter().all(|a| matches!(a, Ok(1))), "{answers:?}");
/// assert_eq!(charges.load(Ordering::SeqCst), 1);
/// # }
/// ```
pub struct Duplicates<T> {
    copies: usize,
    attempts: usize,
    pause: Duration,
    retry: Option<RetryIf<T>>,
}

/// Says whether a copy's result calls for another try.
type RetryIf<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

impl<T> Duplicates<T> {
    /// `copies` copies of the call, each tried once.
    pub fn new(copies: usize) -> Self {
        Duplicates {
            copies,
            attempts: 1,
            pause: Duration::ZERO,
            retry: None,
        }
    }

    /// Tries a copy again, up to `attempts` tries in all, `pause` apart, while `retry`
    /// says its last result calls for it (a conflict, a store error); a copy returns its
    /// last result.
    pub fn retry_if(
        mut self,
        attempts: usize,
        pause: Duration,
        retry: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.attempts = attempts.max(1);
        self.pause = pause;
        self.retry = Some(Box::new(retry));
        self
    }

    /// All copies at once; `call` gets the copy's number (from 0).
    pub async fn concurrently<F, Fut>(&self, call: F) -> Vec<T>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = T>,
    {
        join_all((0..self.copies).map(|copy| self.one(copy, &call))).await
    }

    /// One copy after another, each with its retries, as redeliveries of a message or a
    /// client retrying after each timeout arrive.
    pub async fn sequentially<F, Fut>(&self, call: F) -> Vec<T>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut results = Vec::with_capacity(self.copies);
        for copy in 0..self.copies {
            results.push(self.one(copy, &call).await);
        }
        results
    }

    async fn one<F, Fut>(&self, copy: usize, call: &F) -> T
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut result = call(copy).await;
        for _ in 1..self.attempts {
            match &self.retry {
                Some(retry) if retry(&result) => {}
                _ => break,
            }
            tokio::time::sleep(self.pause).await;
            result = call(copy).await;
        }
        result
    }
}
