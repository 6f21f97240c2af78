//! The Lua scripts: one per operation, each touching exactly one key (`KEYS[1]`, the
//! record), so every operation is atomic, one round trip, and single-slot in Redis Cluster.
//!
//! The record is a hash: `s` state (`p` in progress, `d` done), `t` the claim's token (a
//! decimal string, compared as text so no Lua number rounds it), `f` the fingerprint, and
//! once done `o` the outcome (`ok`/`err`) and `v` the output. The key's expiry is the lease
//! while in progress and the TTL once done; an expired key is absent to every command.
//!
//! Scripts are replicated by their effects (the default since Redis 7), so a path that only
//! reads writes nothing to the AOF or to replicas: a replay does not write.

use std::sync::LazyLock;

/// `claim(token, fingerprint, lease_ms)`: creates the in-progress record if the key is
/// absent (`{0}`); else reports the live record without writing: `{1, fingerprint, outcome,
/// output}` if done, `{2, fingerprint, pttl_ms}` if in progress.
const CLAIM: &str = r#"
local r = redis.call('HMGET', KEYS[1], 's', 'f', 'o', 'v')
if not r[1] then
  redis.call('HSET', KEYS[1], 's', 'p', 't', ARGV[1], 'f', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0}
end
if r[1] == 'd' then
  return {1, r[2], r[3], r[4]}
end
return {2, r[2], redis.call('PTTL', KEYS[1])}
"#;

/// `complete(token, outcome, output, ttl_ms)`: `1` if `token` owns the record (it is now
/// done with this output and expires after the TTL, or was already done by this token and
/// stays as first written), `0` if it does not (nothing written).
const COMPLETE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 's', 't')
if r[2] ~= ARGV[1] then
  return 0
end
if r[1] == 'd' then
  return 1
end
redis.call('HSET', KEYS[1], 's', 'd', 'o', ARGV[2], 'v', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// `renew(token, lease_ms)`: `1` and the lease is `lease_ms` from now if `token`'s claim is
/// in progress, else `0` (nothing written).
const RENEW: &str = r#"
local r = redis.call('HMGET', KEYS[1], 's', 't')
if r[1] ~= 'p' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// `release(token)`: `1` and the record is gone if `token`'s claim is in progress, else `0`
/// (nothing written: a completed record stays, another owner's claim stays).
const RELEASE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 's', 't')
if r[1] ~= 'p' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// The scripts, hashed once per process. `Script::invoke_async` runs `EVALSHA` and, on
/// `NOSCRIPT` (a restarted or failed-over server, a `SCRIPT FLUSH`), loads the script and
/// runs it again.
pub(crate) struct Scripts {
    pub(crate) claim: redis::Script,
    pub(crate) complete: redis::Script,
    pub(crate) renew: redis::Script,
    pub(crate) release: redis::Script,
}

/// The one set of scripts every store shares.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: redis::Script::new(CLAIM),
    complete: redis::Script::new(COMPLETE),
    renew: redis::Script::new(RENEW),
    release: redis::Script::new(RELEASE),
});

impl Scripts {
    /// Every script, to load them all when a store connects.
    pub(crate) fn all(&self) -> [&redis::Script; 4] {
        [&self.claim, &self.complete, &self.renew, &self.release]
    }
}
