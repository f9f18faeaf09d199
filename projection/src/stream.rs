//! Redis Streams access shared by the reader and the writers: entry ids, connecting with
//! timeouts, and parsing raw replies of XREADGROUP / XRANGE / XAUTOCLAIM into [`RawEntry`].
//!
//! Replies are parsed from `redis::Value` by hand so that nothing from Redis is trusted: a
//! trimmed entry (fields nil), a non-UTF-8 field name or an unexpected shape becomes data the
//! caller handles (DLQ, ack, error), never a panic.

use std::fmt;
use std::time::Duration;

use redis::Value;

use crate::config::CONNECT_TIMEOUT;
use crate::Error;

/// A stream entry id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// `0-0`: before every entry (Redis never assigns it).
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    pub fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id after this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry as Redis returned it. `fields` is `None` for an entry that was trimmed while it
/// was still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: EntryId,
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

/// Opens a connection with connect and read timeouts; the read timeout must exceed any
/// BLOCK we use.
pub fn connect(url: &str, read_timeout: Duration) -> Result<redis::Connection, Error> {
    let client = redis::Client::open(url).map_err(|e| Error::redis("open redis url", e))?;
    let conn = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|e| Error::redis("connect to redis", e))?;
    conn.set_read_timeout(Some(read_timeout))
        .map_err(|e| Error::redis("set redis read timeout", e))?;
    conn.set_write_timeout(Some(read_timeout))
        .map_err(|e| Error::redis("set redis write timeout", e))?;
    Ok(conn)
}

/// XRANGE `(after` .. `upto` (inclusive; `None` = the end) COUNT `count`.
pub fn xrange(
    conn: &mut redis::Connection,
    stream: &str,
    after: EntryId,
    upto: Option<EntryId>,
    count: usize,
) -> Result<Vec<RawEntry>, Error> {
    let end = upto.map_or_else(|| "+".to_owned(), |u| u.to_string());
    let v: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({after}"))
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query(conn)
        .map_err(|e| Error::redis("xrange", e))?;
    parse_entries(&v)
}

/// The id of the newest entry ever added to `stream` (XINFO STREAM `last-generated-id`; it
/// survives trimming), `0-0` when the stream does not exist.
pub fn last_generated_id(conn: &mut redis::Connection, stream: &str) -> Result<EntryId, Error> {
    let v: redis::RedisResult<Value> = redis::cmd("XINFO").arg("STREAM").arg(stream).query(conn);
    let v = match v {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => return Ok(EntryId::ZERO),
        Err(e) => return Err(Error::redis("xinfo stream", e)),
    };
    let pairs = pairs(&v).ok_or_else(|| Error::Reply(format!("xinfo stream: {v:?}")))?;
    field(&pairs, "last-generated-id")
        .and_then(|t| EntryId::parse(&t))
        .ok_or_else(|| Error::Reply("xinfo stream: no last-generated-id".into()))
}

/// The newest entry `group` has delivered to any of its consumers (XINFO GROUPS
/// `last-delivered-id`): entries after it are unread. `0-0` when the group is not there.
pub fn group_last_delivered(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
) -> Result<EntryId, Error> {
    let v: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .map_err(|e| Error::redis("xinfo groups", e))?;
    parse_last_delivered(&v, group)
}

/// `last-delivered-id` of `group` in an XINFO GROUPS reply.
fn parse_last_delivered(v: &Value, group: &str) -> Result<EntryId, Error> {
    let Value::Array(groups) = v else {
        return Err(Error::Reply(format!("xinfo groups: {v:?}")));
    };
    for g in groups {
        let pairs = pairs(g).ok_or_else(|| Error::Reply(format!("xinfo groups: {g:?}")))?;
        if field(&pairs, "name").as_deref() == Some(group) {
            return field(&pairs, "last-delivered-id")
                .and_then(|t| EntryId::parse(&t))
                .ok_or_else(|| {
                    Error::Reply(format!("xinfo groups {group}: no last-delivered-id"))
                });
        }
    }
    Ok(EntryId::ZERO)
}

/// The key/value pairs of an XINFO reply: a flat array in RESP2, a map in RESP3.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Array(flat) => Some(
            flat.chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
        ),
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

fn field(pairs: &[(&Value, &Value)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| text(k).as_deref() == Some(name))
        .and_then(|(_, v)| text(v))
}

/// The entries of an XREADGROUP reply for one stream (nil on timeout = none).
pub fn parse_read_reply(v: &Value) -> Result<Vec<RawEntry>, Error> {
    match v {
        Value::Nil => Ok(Vec::new()),
        // RESP2: [[stream, entries], ...]
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                match s {
                    Value::Array(pair) if pair.len() == 2 => out.extend(parse_entries(&pair[1])?),
                    other => return Err(Error::Reply(format!("xreadgroup stream: {other:?}"))),
                }
            }
            Ok(out)
        }
        // RESP3: {stream: entries}
        Value::Map(pairs) => {
            let mut out = Vec::new();
            for (_, entries) in pairs {
                out.extend(parse_entries(entries)?);
            }
            Ok(out)
        }
        other => Err(Error::Reply(format!("xreadgroup: {other:?}"))),
    }
}

/// XAUTOCLAIM reply (Redis ≥ 7): `[next cursor, entries, deleted ids]`.
pub fn parse_autoclaim_reply(v: &Value) -> Result<(EntryId, Vec<RawEntry>), Error> {
    match v {
        Value::Array(parts) if parts.len() >= 2 => {
            let cursor = text(&parts[0])
                .and_then(|t| EntryId::parse(&t))
                .ok_or_else(|| Error::Reply(format!("xautoclaim cursor: {:?}", parts[0])))?;
            Ok((cursor, parse_entries(&parts[1])?))
        }
        other => Err(Error::Reply(format!("xautoclaim: {other:?}"))),
    }
}

/// `[[id, [field, value, ...] | nil], ...]`
pub fn parse_entries(v: &Value) -> Result<Vec<RawEntry>, Error> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(Error::Reply(format!("entries: {other:?}"))),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(Error::Reply(format!("entry: {item:?}")));
        };
        let id = pair
            .first()
            .and_then(text)
            .and_then(|t| EntryId::parse(&t))
            .ok_or_else(|| Error::Reply(format!("entry id: {item:?}")))?;
        let fields = match pair.get(1) {
            Some(Value::Array(kv)) => Some(
                kv.chunks(2)
                    .map(|c| {
                        let name = c.first().and_then(text).unwrap_or_default();
                        let value = c.get(1).and_then(bytes).unwrap_or_default();
                        (name, value)
                    })
                    .collect(),
            ),
            Some(Value::Map(kv)) => Some(
                kv.iter()
                    .map(|(k, v)| (text(k).unwrap_or_default(), bytes(v).unwrap_or_default()))
                    .collect(),
            ),
            _ => None,
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        let check = |s: &str, expect: Option<(u64, u64)>| {
            assert_eq!(
                EntryId::parse(s),
                expect.map(|(ms, seq)| EntryId { ms, seq }),
                "{s:?}"
            );
        };
        check("1-2", Some((1, 2)));
        check("1700000000000-0", Some((1_700_000_000_000, 0)));
        check("1", None);
        check("a-1", None);
        check("-1-1", None);
        assert!(EntryId::parse("9-0") < EntryId::parse("10-0"));
        assert_eq!(EntryId { ms: 1, seq: 2 }.next().to_string(), "1-3");
    }

    #[test]
    fn trimmed_pending_entries_have_no_fields() {
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"1-1".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"k".to_vec()),
                    Value::BulkString(b"v".to_vec()),
                ]),
            ]),
            Value::Array(vec![Value::BulkString(b"1-2".to_vec()), Value::Nil]),
        ]);
        let got = parse_entries(&v).unwrap();
        assert_eq!(got[0].fields, Some(vec![("k".into(), b"v".to_vec())]));
        assert_eq!(got[1].fields, None);
        assert!(parse_entries(&Value::Int(3)).is_err());
    }

    #[test]
    fn last_delivered_of_our_group() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let group = |name: &str, last: &str| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(1),
                bulk("last-delivered-id"),
                bulk(last),
            ])
        };
        let v = Value::Array(vec![group("other", "9-9"), group("ours", "5-2")]);
        let check = |v: &Value, expect: Option<&str>| {
            let got = parse_last_delivered(v, "ours")
                .ok()
                .map(|id| id.to_string());
            assert_eq!(got.as_deref(), expect, "{v:?}");
        };
        check(&v, Some("5-2"));
        check(&Value::Array(vec![group("other", "9-9")]), Some("0-0"));
        check(&Value::Array(vec![group("ours", "x")]), None);
        check(&Value::Int(1), None);
    }
}
