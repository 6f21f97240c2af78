//! The Lua scripts of the fenced operations — `complete`, `renew`, `release` — each touching
//! exactly one key (`KEYS[1]`, the record), so each is atomic, one round trip, and
//! single-slot in Redis Cluster. (The claim needs no script: it is one `SET … NX GET`.)
//!
//! Each reads the packed record (`record.rs`) with one `GET` and compares the token at bytes
//! 2..9 (Lua counts from 1) with `ARGV[1]`, the caller's token as 8 raw bytes; byte 1 is the
//! kind, 193 (0xC1) while in progress. A path that finds another owner writes nothing.
//!
//! Scripts are replicated by their effects (the default since Redis 7), so only the `SET`
//! or `DEL` they make reaches the AOF and the replicas.

use idem_core::StoreError;
use redis::Value;
use std::sync::LazyLock;

use crate::error::malformed;

/// `complete(token, kind, output, ttl_ms)`: `1` if `token` owns the record — it is now the
/// completed record (`kind` byte, then the token and fingerprint it had, then `output`)
/// and expires after the TTL; or `token` had completed it already, and it stays as first
/// written — else `0` (nothing written).
const COMPLETE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
if string.byte(v, 1) ~= 193 then
  return 1
end
redis.call('SET', KEYS[1], ARGV[2] .. string.sub(v, 2, 41) .. ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// `renew(token, lease_bytes, lease_ms)`: `1` if `token`'s claim is in progress — its lease
/// is now `lease_ms` from now, and the record says so (`lease_bytes`: the lease in ms,
/// 8 bytes little-endian) — else `0` (nothing written).
const RENEW: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 193 or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], string.sub(v, 1, 41) .. ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// `release(token)`: `1` and the record is gone if `token`'s claim is in progress, else `0`
/// (nothing written: a completed record stays, another owner's claim stays).
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 193 or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// The scripts, hashed once per process. `Script::invoke_async` runs `EVALSHA` and, on
/// `NOSCRIPT` (a restarted or failed-over server, a `SCRIPT FLUSH`), loads the script and
/// runs it again.
pub(crate) struct Scripts {
    pub(crate) complete: redis::Script,
    pub(crate) renew: redis::Script,
    pub(crate) release: redis::Script,
}

/// The one set of scripts every store shares.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    complete: redis::Script::new(COMPLETE),
    renew: redis::Script::new(RENEW),
    release: redis::Script::new(RELEASE),
});

impl Scripts {
    /// Every script, to load them all when a store connects.
    pub(crate) fn all(&self) -> [&redis::Script; 3] {
        [&self.complete, &self.renew, &self.release]
    }
}

/// The reply of a fenced script: `1` done, `0` the token does not own the record.
pub(crate) fn fenced(op: &'static str, reply: Value) -> Result<(), StoreError> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(0) => Err(StoreError::LeaseLost),
        other => Err(malformed(op, format!("expected 0 or 1, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_replies() {
        assert!(matches!(
            fenced("renew", Value::Int(0)),
            Err(StoreError::LeaseLost)
        ));
        assert!(fenced("renew", Value::Int(1)).is_ok());
        assert!(matches!(
            fenced("renew", Value::Nil),
            Err(StoreError::Backend { .. })
        ));
    }
}
