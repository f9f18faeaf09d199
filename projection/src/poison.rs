//! Poison that decodes (SPEC §7.4): which query-DB errors mean "this DB will never take this
//! data" rather than "this DB is unavailable", and how hard a writer tries before it gives up
//! on one entry.
//!
//! The writer (`writer.rs`) uses it like this: a transaction fails with a rejection → it
//! splits the batch in halves and applies each (recursively), so the rest of the batch commits
//! and the one entry at fault is isolated; that entry is retried [`ATTEMPTS`] times in all,
//! then copied to the dead-letter stream (`dlq::park_once`) and the checkpoint moves past it.
//! Any other error (connection lost, timeout) keeps the old behaviour: detach, back off, catch
//! up from the checkpoint — an unavailable DB never sends entries to the DLQ.
//!
//! Why by SQLSTATE class: a data exception (class 22, e.g. 22021 "invalid byte sequence" for a
//! U+0000 in a text column), an integrity constraint (class 23) or a program limit (class 54,
//! e.g. a row too large) depends only on the data, so the same entry fails the same way on
//! every retry and every DB; nothing in class 08/57 (connection, shutdown) or 40 (retryable)
//! does.

use std::time::Duration;

use crate::Error;

/// Tries of one isolated entry before it is parked: the first failure may have been a
/// constraint that a concurrent rebuild was about to change, three identical refusals are not.
pub const ATTEMPTS: u32 = 3;

/// Pause between those tries: long enough for a concurrent transaction to finish, short enough
/// that the healthy entries behind the poison wait well under a second.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// SQLSTATE classes that reject the data itself (see the module doc).
const REJECTING_CLASSES: [&str; 3] = ["22", "23", "54"];

/// The reason to record when `e` is a DB refusing the data, `None` for every other error.
pub fn rejection(e: &Error) -> Option<String> {
    let Error::Db { db, source } = e else {
        return None;
    };
    let d = source.as_db_error()?;
    rejects(d.code().code()).then(|| {
        format!(
            "rejected by query db {db}: {} (SQLSTATE {})",
            d.message(),
            d.code().code()
        )
    })
}

/// Whether SQLSTATE `code` is a refusal of the data.
pub fn rejects(code: &str) -> bool {
    REJECTING_CLASSES.iter().any(|c| code.starts_with(c)) && code.len() == 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_reject_and_outages_do_not() {
        let check = |code: &str, expect: bool| assert_eq!(rejects(code), expect, "{code}");
        check("22021", true); // character not in repertoire: U+0000 in text
        check("22P02", true); // invalid text representation
        check("23514", true); // check violation
        check("23505", true); // unique violation
        check("54000", true); // program limit exceeded
        check("08006", false); // connection failure
        check("57P01", false); // admin shutdown
        check("57014", false); // statement timeout
        check("40001", false); // serialization failure: retry, not poison
        check("42P01", false); // undefined table: schema, every entry would fail
        check("22", false);
    }
}
