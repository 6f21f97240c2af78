//! Without `store =` and without `idem::set_default_store`, a call fails cleanly.
//! (Its own test binary: the default store is process-wide.)

mod support;

use idem::idempotent;
use support::{AppError, Calls};

#[idempotent(key = key, skip(calls))]
async fn needs_a_store(calls: &Calls, key: &str) -> Result<usize, AppError> {
    Ok(calls.hit())
}

#[tokio::test]
async fn a_call_without_any_store_is_a_store_error_and_does_not_run() {
    let calls = Calls::default();
    let err = needs_a_store(&calls, "k").await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::Idem(idem::Error::Store(idem::StoreError::NoDefaultStore))
        ),
        "{err:?}"
    );
    assert!(
        err.idem()
            .unwrap()
            .to_string()
            .contains("set_default_store")
    );
    assert_eq!(calls.count(), 0);
}
