//! The fencing token on the Redis side: every publish is one Lua script that compares the
//! relay's lease epoch with the highest epoch Redis has seen (key [`FENCE_KEY`]) and appends
//! the batch only when ours is not older. Redis runs a script atomically, so the check and the
//! XADDs cannot be separated by another relay's publish.
//!
//! Why: the lease (`lease.rs`) ends by database time, but a leader that was frozen (SIGSTOP, a
//! long GC-like stall, a VM pause) does not know that when it wakes, and may be in the middle
//! of a batch it read before it froze. Its successor raised the fence when it took over, so
//! the stale batch is refused instead of landing after newer events of the same report.
//!
//! A new term starts with [`claim`]: raise the fence, and in the same atomic step read the
//! event ids of the stream's last entries. The old leader may have appended its last batch
//! without living to mark it published; the new leader skips exactly those ids, so a takeover
//! does not append a report's older versions again after its newer ones.
//!
//! The scripts go with `EVAL` (a few hundred bytes beside a batch of snapshots): the `redis`
//! crate's `Script` helper needs its `script` feature and a SHA-1 crate we do not build.
//!
//! **Guarantee:** once a relay with epoch E has claimed, no publish with an epoch below E
//! reaches the stream.

use shared::event::STREAM;

/// Highest relay epoch that has published or claimed. Lives beside the stream; if Redis loses
/// it (data loss), the next publish sets it again from the lease.
pub const FENCE_KEY: &str = "report-events:relay-epoch";

/// KEYS[1] stream, KEYS[2] fence; ARGV[1] epoch, then 14 values (7 field/value pairs) per
/// event. Answers `{1, appended}` or `{0, fence}` when a newer epoch exists.
const PUBLISH: &str = r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = tonumber(ARGV[1])
if fence > epoch then return {0, fence} end
if fence < epoch then redis.call('SET', KEYS[2], ARGV[1]) end
local n = 0
for i = 2, #ARGV, 14 do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i, i + 13))
  n = n + 1
end
return {1, n}
";

/// KEYS[1] stream, KEYS[2] fence; ARGV[1] epoch, ARGV[2] how many entries to look back.
/// Answers `{1, epoch, {event ids}}` or `{0, fence, {}}` when a newer epoch exists.
const CLAIM: &str = r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = tonumber(ARGV[1])
if fence > epoch then return {0, fence, {}} end
if fence < epoch then redis.call('SET', KEYS[2], ARGV[1]) end
local ids = {}
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])
for _, e in ipairs(entries) do
  local f = e[2]
  for k = 1, #f - 1, 2 do
    if f[k] == 'event_id' then ids[#ids + 1] = f[k + 1] end
  end
end
return {1, epoch, ids}
";

/// Fields of one stream entry, in SPEC §3 order.
pub type Fields = [(&'static str, String); 7];

#[derive(Debug)]
pub enum FenceError {
    /// A relay with this newer epoch has claimed: we are not the leader any more.
    Fenced {
        newer: i64,
    },
    Redis(redis::RedisError),
}

impl std::fmt::Display for FenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceError::Fenced { newer } => {
                write!(f, "fenced: a relay with epoch {newer} has taken over")
            }
            FenceError::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

impl From<redis::RedisError> for FenceError {
    fn from(e: redis::RedisError) -> Self {
        FenceError::Redis(e)
    }
}

/// Starts term `epoch`: raises the fence and returns the event ids among the stream's last
/// `look_back` entries (what a previous leader may have appended without marking).
pub fn claim(
    redis: &mut redis::Connection,
    epoch: i64,
    look_back: i64,
) -> Result<Vec<String>, FenceError> {
    let (ok, value, ids): (i64, i64, Vec<String>) = redis::cmd("EVAL")
        .arg(CLAIM)
        .arg(2)
        .arg(STREAM)
        .arg(FENCE_KEY)
        .arg(epoch)
        .arg(look_back)
        .query(redis)?;
    if ok == 1 {
        Ok(ids)
    } else {
        Err(FenceError::Fenced { newer: value })
    }
}

/// Appends `events` to the stream in order, atomically with the epoch check; returns how many
/// were appended.
pub fn publish(
    redis: &mut redis::Connection,
    epoch: i64,
    events: &[Fields],
) -> Result<usize, FenceError> {
    let mut call = redis::cmd("EVAL");
    call.arg(PUBLISH)
        .arg(2)
        .arg(STREAM)
        .arg(FENCE_KEY)
        .arg(epoch);
    for fields in events {
        for (name, value) in fields {
            call.arg(*name).arg(value.as_str());
        }
    }
    let (ok, value): (i64, i64) = call.query(redis)?;
    if ok == 1 {
        Ok(value as usize)
    } else {
        Err(FenceError::Fenced { newer: value })
    }
}
