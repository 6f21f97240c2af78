//! Types shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An application error that carries idem's errors (not serializable, so never cached).
#[derive(Debug)]
pub enum AppError {
    Idem(idem::Error),
    Declined,
}

impl From<idem::Error> for AppError {
    fn from(e: idem::Error) -> Self {
        AppError::Idem(e)
    }
}

impl AppError {
    pub fn idem(&self) -> Option<&idem::Error> {
        match self {
            AppError::Idem(e) => Some(e),
            AppError::Declined => None,
        }
    }
}

/// A serializable error, for `errors = cache` and `cache_if`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PayError {
    Declined { code: u32 },
    Transient,
    Idem(String),
}

impl From<idem::Error> for PayError {
    fn from(e: idem::Error) -> Self {
        PayError::Idem(e.to_string())
    }
}

/// Counts executions of a body.
#[derive(Default)]
pub struct Calls(AtomicUsize);

impl Calls {
    /// Records one execution and returns its number (1 for the first).
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A command that runs this test binary again as a worker process: only its ignored test
/// `test`, on one thread, its stdout piped (where it reports to the test).
pub fn worker_command(test: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped());
    command
}

#[cfg(feature = "metrics")]
pub mod counters;

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod proxy;

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod bank;
