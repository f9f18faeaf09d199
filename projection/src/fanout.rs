//! The fan-out between the reader and the writers: the closed message enums that flow between
//! the threads, the decoded entry, and [`Fanout`], which hands each batch to every attached
//! writer without ever waiting for one.
//!
//! Guarantees (SPEC §4.2):
//! - no shared bounded queue: each writer has its own channel and the reader only `try_send`s,
//!   so a slow or dead query DB never blocks the reader or the healthy writers;
//! - a writer whose channel is full is *detached*: it gets nothing live until it has caught up
//!   from its own checkpoint with XRANGE and asked to rejoin;
//! - the reader is paced by the *fastest* attached writer only ([`Fanout::saturated`]): it
//!   stops reading while every attached writer has a deep queue, so a backlog flows once
//!   through the reader to every writer instead of overrunning them all into separate
//!   catch-ups, and a slow writer still never holds the others back;
//! - a rejoin is exact: the reader answers with the last entry it dispatched, and the writer
//!   covers the gap up to it before taking live batches again, so no entry is skipped.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use shared::event::{Event, Payload};

use crate::metrics::DbStatus;
use crate::stream::{EntryId, RawEntry};

/// A stream entry that decoded cleanly.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub id: EntryId,
    pub event: Event,
    pub payload: Payload,
}

/// Decodes an entry with the shared codec; the error is the DLQ reason.
pub fn decode(raw: &RawEntry) -> Result<Decoded, String> {
    let fields = raw
        .fields
        .as_ref()
        .ok_or_else(|| "entry has no fields (trimmed)".to_owned())?;
    let event = Event::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| e.to_string())?;
    let payload = event.decode_payload().map_err(|e| e.to_string())?;
    Ok(Decoded {
        id: raw.id,
        event,
        payload,
    })
}

/// Entries read together, shared by every writer without copying.
#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Decoded>,
}

/// Reader → writer.
#[derive(Debug)]
pub enum ToWriter {
    /// Apply these entries (the writer is attached).
    Batch(Arc<Batch>),
    /// Answer to [`FromWriter::Rejoin`]: you are attached again; every entry after `upto`
    /// comes live, entries up to `upto` you fetch yourself.
    Rejoined { upto: EntryId },
}

/// Writer → reader.
#[derive(Debug)]
pub enum FromWriter {
    /// Every entry up to `upto` that was dispatched or is in the stream is applied and
    /// committed in this DB (its watermark; the checkpoint says the same).
    Applied { db: usize, upto: EntryId },
    /// Caught up to `at` from the checkpoint; please attach me.
    Rejoin { db: usize, at: EntryId },
    /// A stale DB is being rebuilt and will catch up from `at` (`Some`): keep every entry
    /// after it in the stream until the pin is lifted (`None`), although the DB counts as
    /// stale meanwhile.
    Pin { db: usize, at: Option<EntryId> },
}

/// The reader's end of one writer.
#[derive(Debug)]
pub struct WriterLink {
    pub tx: Sender<ToWriter>,
    pub status: Arc<DbStatus>,
    pub thread: JoinHandle<()>,
}

/// Every writer, in `QUERY_DATABASE_URLS` order (the index is the `db` in messages).
#[derive(Debug)]
pub struct Fanout {
    links: Vec<WriterLink>,
}

impl Fanout {
    pub fn new(links: Vec<WriterLink>) -> Fanout {
        Fanout { links }
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Hands `batch` to every attached writer; never blocks.
    pub fn dispatch(&self, batch: &Arc<Batch>) {
        for link in &self.links {
            if !link.status.is_attached() {
                continue;
            }
            match link.tx.try_send(ToWriter::Batch(Arc::clone(batch))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    link.status.set_attached(false);
                    shared::warn!(
                        "fanout: writer {} is behind (queue full); detached, it catches up from its checkpoint",
                        link.status.name
                    );
                }
                Err(TrySendError::Disconnected(_)) => {
                    link.status.set_attached(false);
                    shared::error!("fanout: writer {} has stopped", link.status.name);
                }
            }
        }
    }

    /// True while some writer that is not stale is still starting: it has neither been attached
    /// nor failed since the process started. The reader holds back new reads for it during a
    /// short grace at start. A writer that attached once or failed once is never waited for:
    /// it catches up from its own checkpoint, so waiting would only stall the others.
    pub fn awaiting_first_attach(&self) -> bool {
        self.links
            .iter()
            .any(|l| !l.status.is_stale() && !l.status.is_attached() && l.status.is_starting())
    }

    /// True while at least one writer is attached and every attached writer has `pace` or more
    /// batches queued: the fastest DB has enough work, reading more would only fill channels.
    pub fn saturated(&self, pace: usize) -> bool {
        let mut attached = self
            .links
            .iter()
            .filter(|l| l.status.is_attached())
            .peekable();
        attached.peek().is_some() && attached.all(|l| l.tx.len() >= pace)
    }

    /// Attaches writer `db`, telling it the last entry dispatched so far.
    pub fn rejoin(&self, db: usize, at: EntryId, last_dispatched: EntryId) {
        let Some(link) = self.links.get(db) else {
            return;
        };
        let upto = at.max(last_dispatched);
        // Attach first: every batch dispatched after this point is queued behind `Rejoined`.
        link.status.set_attached(true);
        if link.tx.try_send(ToWriter::Rejoined { upto }).is_err() {
            // The writer will time out waiting and ask again.
            link.status.set_attached(false);
            return;
        }
        link.status.started();
        shared::info!(
            "fanout: writer {} rejoined at {at} (live after {upto})",
            link.status.name
        );
    }

    /// Drops every sender (writers finish the batch in flight and stop) and waits for the
    /// threads up to `grace`.
    pub fn shutdown(self, grace: Duration) {
        let mut threads = Vec::with_capacity(self.links.len());
        for link in self.links {
            drop(link.tx);
            threads.push((link.status, link.thread));
        }
        let deadline = Instant::now() + grace;
        for (status, thread) in threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                if thread.join().is_err() {
                    shared::error!("writer {} panicked", status.name);
                }
            } else {
                shared::warn!(
                    "writer {} did not stop within {grace:?}; its open transaction rolls back",
                    status.name
                );
            }
        }
    }
}
