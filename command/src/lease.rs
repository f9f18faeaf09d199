//! The relay's leadership lease: one row in the command DB (`relay_lease`) naming the relay
//! that may publish, its term (`epoch`) and when the lease ends (`expires_at`).
//!
//! A lease is taken and renewed with one short autocommit statement each, and expiry is judged
//! by the database's clock (`now()`), so the clocks of the command instances never matter. A
//! relay takes the lease only when it has expired (or when it is its own, after a reconnect);
//! every take starts a new term with a higher epoch. The epoch is the fencing token the relay
//! hands to Redis with every publish (see `fence.rs`), so a leader that lost its lease while
//! it was frozen cannot publish after its successor.
//!
//! **Guarantee:** at any moment of database time at most one holder has an unexpired lease,
//! and epochs only grow.

use std::time::Duration;

use postgres::types::Type;
use postgres::Client;

/// How long a lease lasts after its last renewal. Together with [`RENEW_EVERY`] and the
/// followers' poll this bounds how long a leader that stopped publishing (Redis unreachable
/// from it, frozen, cut off) keeps the others waiting: its lease ends at most `LEASE_TTL`
/// after its last good Redis call. 3 s is long enough that one missed renewal (a slow commit,
/// a GC-free but busy box) does not cost the lease — it renews every second — and short
/// enough that a takeover stays well inside the 5 s the SPEC allows.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often a leader renews: a third of [`LEASE_TTL`], so two renewals in a row may fail
/// (or be skipped after a Redis error) before the lease is lost.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// A term of leadership: the epoch of the lease this relay took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub epoch: i64,
}

fn ttl_ms() -> i64 {
    LEASE_TTL.as_millis() as i64
}

/// Takes the lease if it has expired, is free, or is already ours (after a reconnect: a new
/// term then starts, so a half-published batch of the old term is found by the new claim).
/// Returns the new term, or `None` while another holder's lease runs.
pub fn acquire(pg: &mut Client, holder: &str) -> Result<Option<Term>, postgres::Error> {
    let rows = pg.query_typed(
        "INSERT INTO relay_lease AS l (id, holder, epoch, expires_at) \
         VALUES (true, $1, 1, now() + $2 * interval '1 millisecond') \
         ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, \
             expires_at = EXCLUDED.expires_at \
         WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder \
         RETURNING epoch",
        &[(&holder, Type::TEXT), (&ttl_ms(), Type::INT8)],
    )?;
    Ok(match rows.first() {
        Some(row) => Some(Term {
            epoch: row.try_get(0)?,
        }),
        None => None,
    })
}

/// Extends our lease by [`LEASE_TTL`] from now; false when it is no longer ours (it expired,
/// or another relay took it) — the caller must stop publishing.
pub fn renew(pg: &mut Client, holder: &str, term: &Term) -> Result<bool, postgres::Error> {
    let rows = pg.query_typed(
        "UPDATE relay_lease SET expires_at = now() + $3 * interval '1 millisecond' \
         WHERE id AND holder = $1 AND epoch = $2 AND expires_at > now() RETURNING epoch",
        &[
            (&holder, Type::TEXT),
            (&term.epoch, Type::INT8),
            (&ttl_ms(), Type::INT8),
        ],
    )?;
    Ok(!rows.is_empty())
}

/// Moves our still-valid term to `epoch` (used when Redis remembers a higher epoch than the
/// database, e.g. after the command DB was restored from a backup): safe because while we
/// hold the lease nobody else can, so whoever used the higher epoch is gone.
pub fn raise_epoch(
    pg: &mut Client,
    holder: &str,
    term: &Term,
    epoch: i64,
) -> Result<Option<Term>, postgres::Error> {
    let rows = pg.query_typed(
        "UPDATE relay_lease SET epoch = $3 \
         WHERE id AND holder = $1 AND epoch = $2 AND expires_at > now() RETURNING epoch",
        &[
            (&holder, Type::TEXT),
            (&term.epoch, Type::INT8),
            (&epoch, Type::INT8),
        ],
    )?;
    Ok(match rows.first() {
        Some(row) => Some(Term {
            epoch: row.try_get(0)?,
        }),
        None => None,
    })
}

/// Ends our lease now (a clean shutdown), so a follower takes over at its next poll instead
/// of waiting for the expiry.
pub fn release(pg: &mut Client, holder: &str, term: &Term) -> Result<(), postgres::Error> {
    pg.query_typed(
        "UPDATE relay_lease SET expires_at = now() \
         WHERE id AND holder = $1 AND epoch = $2 AND expires_at > now()",
        &[(&holder, Type::TEXT), (&term.epoch, Type::INT8)],
    )?;
    Ok(())
}
