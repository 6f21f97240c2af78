//! Retrying HTTP requests with the same `Idempotency-Key` (feature `reqwest`).
