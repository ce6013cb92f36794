//! A hub's delivery feedback: the records IoT Hub writes when a cloud-to-device message asked
//! for them (`iothub-ack`) reaches its end (completed, expired, dead-lettered, purged), and the
//! feedback messages a back end takes them in, on the AMQP node
//! `/messages/servicebound/feedback` or the hub service API's REST.
//!
//! Durable, one document per hub in the store (`kind::FEEDBACK`, by hub host), changed with
//! [`Store::update`] only. Records wait as they come; a feedback message is made when a back end
//! takes one: every record waiting then, up to [`MAX_BATCH`], as one JSON array. It lives
//! `FEEDBACK_TTL_SECONDS` from its oldest record, is locked `FEEDBACK_LOCK_SECONDS` while a
//! receiver holds it (the lock token is its REST `ETag`), is offered again once abandoned or its
//! lock runs out, and is dead-lettered (dropped) once taken `MAX_FEEDBACK_DELIVERY_COUNT` times.
//! Completing or abandoning needs the current lock token of the hub's own message: a token of
//! another hub, an expired or a made-up one is refused.
//!
//! New records and abandoned messages bump a watch counter, which wakes the AMQP links waiting
//! for feedback; a link finding only locked messages waits until the earliest lock runs out.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::emulator::cloud::random_guid;
use crate::emulator::store::Store;
use crate::emulator::store::kind::FEEDBACK;
use crate::error::Result;
use crate::protocol::c2d::{
    FEEDBACK_LOCK_SECONDS, FEEDBACK_TTL_SECONDS, FeedbackRecord, MAX_FEEDBACK_DELIVERY_COUNT,
};

/// Records in one feedback message at most. Azure batches "when possible" without a number;
/// 64 records (about 16 KB of JSON) keep a message far below the AMQP endpoint's frame and
/// message limits and a REST body a client reads at once, while a burst still drains in few
/// messages.
pub(crate) const MAX_BATCH: usize = 64;

/// Records waiting per hub at most. They leave after `FEEDBACK_TTL_SECONDS` anyway; this bounds
/// what a hub nobody reads keeps meanwhile (the oldest go first, as they would expire first).
const MAX_PENDING: usize = 10_000;

/// A record waiting for a back end to take it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    record: FeedbackRecord,
    /// When the outcome was recorded, Unix milliseconds.
    at_ms: i64,
}

/// A feedback message: records handed to a back end together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct FeedbackMessage {
    /// Its message id (a GUID).
    pub(crate) message_id: String,
    /// The lock token of the current delivery (a new one each time it is taken).
    pub(crate) lock_token: String,
    /// The records, the body's JSON array.
    pub(crate) records: Vec<FeedbackRecord>,
    /// When it was made, Unix milliseconds.
    pub(crate) enqueued_ms: i64,
    /// When it leaves the queue untaken, Unix milliseconds.
    pub(crate) expires_ms: i64,
    /// How many times it was taken, this time included.
    pub(crate) delivery_count: u32,
    /// Until when the current delivery holds it, Unix milliseconds (0: not held).
    locked_until_ms: i64,
}

impl FeedbackMessage {
    /// The body: the records as one JSON array (`application/vnd.microsoft.iothub.feedback.json`).
    pub(crate) fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.records).unwrap_or_else(|_| b"[]".to_vec())
    }
}

/// A hub's feedback as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HubFeedback {
    #[serde(default)]
    pending: Vec<Pending>,
    #[serde(default)]
    messages: Vec<FeedbackMessage>,
}

impl HubFeedback {
    /// Drops what expired and what was taken too often; the messages dead-lettered are logged.
    fn prune(&mut self, hub: &str, now: i64) {
        let ttl = FEEDBACK_TTL_SECONDS * 1000;
        self.pending.retain(|p| p.at_ms + ttl > now);
        self.messages.retain(|m| {
            let free = m.locked_until_ms <= now;
            let dead = free && m.delivery_count >= MAX_FEEDBACK_DELIVERY_COUNT;
            if dead {
                log::info!(
                    "hub {hub}: feedback message {} dead-lettered after {} deliveries",
                    m.message_id,
                    m.delivery_count
                );
            }
            m.expires_ms > now && !dead
        });
    }

    fn stored(self) -> Option<Self> {
        (!self.pending.is_empty() || !self.messages.is_empty()).then_some(self)
    }
}

/// What a back end asking for feedback gets.
#[derive(Debug)]
pub(crate) enum Taken {
    /// A feedback message, locked for this delivery.
    Message(FeedbackMessage),
    /// Nothing to take now; messages held by other deliveries are free again at this time
    /// (Unix milliseconds), if any.
    Nothing(Option<i64>),
}

/// The feedback queues of every hub.
pub(crate) struct Feedback {
    store: Arc<Store>,
    /// The cloud's clock: records expire, and locks run out, in the cloud's time.
    clock: Clock,
    /// Bumped when something may be taken that could not be before.
    offered: watch::Sender<u64>,
}

fn key(hub: &str) -> String {
    hub.to_ascii_lowercase()
}

impl Feedback {
    /// The queues kept in `store`, timed by `clock`.
    pub(crate) fn new(store: Arc<Store>, clock: Clock) -> Self {
        Feedback {
            store,
            clock,
            offered: watch::Sender::new(0),
        }
    }

    /// The clock its records and locks are timed by (a link waiting for a lock to run out
    /// reads it).
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A counter that changes whenever new feedback may be taken (mark it seen, take, and wait
    /// for a change only when nothing was there: nothing slips between the two).
    pub(crate) fn offered(&self) -> watch::Receiver<u64> {
        self.offered.subscribe()
    }

    fn wake(&self) {
        self.offered.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records outcomes of `hub`'s messages for its back end.
    pub(crate) fn add(&self, hub: &str, records: Vec<FeedbackRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        self.store
            .update(FEEDBACK, &key(hub), |stored: Option<HubFeedback>| {
                let mut queue = stored.unwrap_or_default();
                queue.prune(hub, now);
                queue.pending.extend(
                    records
                        .into_iter()
                        .map(|record| Pending { record, at_ms: now }),
                );
                let excess = queue.pending.len().saturating_sub(MAX_PENDING);
                if excess > 0 {
                    log::warn!(
                        "hub {hub}: {excess} feedback records dropped: nobody takes feedback"
                    );
                    queue.pending.drain(..excess);
                }
                Ok((queue.stored(), ()))
            })?;
        self.wake();
        Ok(())
    }

    /// Takes `hub`'s next feedback message, locked for `FEEDBACK_LOCK_SECONDS`: one offered
    /// before and free again, else a new one of the records waiting.
    pub(crate) fn take(&self, hub: &str) -> Result<Taken> {
        let now = self.clock.now_ms();
        let lock = FEEDBACK_LOCK_SECONDS * 1000;
        self.store
            .update(FEEDBACK, &key(hub), |stored: Option<HubFeedback>| {
                let mut queue = stored.unwrap_or_default();
                queue.prune(hub, now);
                let taken = if let Some(message) =
                    queue.messages.iter_mut().find(|m| m.locked_until_ms <= now)
                {
                    message.lock_token = random_guid();
                    message.locked_until_ms = now + lock;
                    message.delivery_count += 1;
                    Taken::Message(message.clone())
                } else if !queue.pending.is_empty() {
                    let count = queue.pending.len().min(MAX_BATCH);
                    let batch: Vec<Pending> = queue.pending.drain(..count).collect();
                    let oldest = batch.iter().map(|p| p.at_ms).min().unwrap_or(now);
                    let message = FeedbackMessage {
                        message_id: random_guid(),
                        lock_token: random_guid(),
                        records: batch.into_iter().map(|p| p.record).collect(),
                        enqueued_ms: now,
                        expires_ms: oldest + FEEDBACK_TTL_SECONDS * 1000,
                        delivery_count: 1,
                        locked_until_ms: now + lock,
                    };
                    queue.messages.push(message.clone());
                    Taken::Message(message)
                } else {
                    Taken::Nothing(
                        queue
                            .messages
                            .iter()
                            .map(|m| m.locked_until_ms.min(m.expires_ms))
                            .min(),
                    )
                };
                Ok((queue.stored(), taken))
            })
    }

    /// Changes the message `lock_token` holds, if it still holds it; false otherwise.
    fn settle(
        &self,
        hub: &str,
        lock_token: &str,
        change: impl FnOnce(&mut Vec<FeedbackMessage>, usize),
    ) -> Result<bool> {
        let now = self.clock.now_ms();
        self.store
            .update(FEEDBACK, &key(hub), |stored: Option<HubFeedback>| {
                let Some(mut queue) = stored else {
                    return Ok((None, false));
                };
                let held = queue
                    .messages
                    .iter()
                    .position(|m| m.lock_token == lock_token && m.locked_until_ms > now);
                if let Some(index) = held {
                    change(&mut queue.messages, index);
                }
                Ok((queue.stored(), held.is_some()))
            })
    }

    /// The back end is done with the message `lock_token` holds: it leaves the queue. False
    /// when the token holds nothing (unknown, of another hub, or its lock ran out).
    pub(crate) fn complete(&self, hub: &str, lock_token: &str) -> Result<bool> {
        self.settle(hub, lock_token, |messages, index| {
            messages.remove(index);
        })
    }

    /// The back end refused the message `lock_token` holds: it leaves the queue (dead-lettered;
    /// the emulator keeps no dead letters). False as for [`Feedback::complete`].
    pub(crate) fn dead_letter(&self, hub: &str, lock_token: &str) -> Result<bool> {
        self.complete(hub, lock_token)
    }

    /// The back end gives the message `lock_token` holds back: it is offered again at once.
    /// False as for [`Feedback::complete`].
    pub(crate) fn abandon(&self, hub: &str, lock_token: &str) -> Result<bool> {
        let abandoned = self.settle(hub, lock_token, |messages, index| {
            messages[index].locked_until_ms = 0;
        })?;
        if abandoned {
            self.wake();
        }
        Ok(abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::c2d::FeedbackStatus;

    fn record(id: &str) -> FeedbackRecord {
        FeedbackRecord {
            original_message_id: id.into(),
            enqueued_time_utc: "2026-01-01T00:00:00.0000000Z".into(),
            status_code: FeedbackStatus::Success,
            description: FeedbackStatus::Success.description().into(),
            device_id: "dev".into(),
            device_generation_id: "1".into(),
        }
    }

    fn queues() -> (tempfile::TempDir, Feedback) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, Feedback::new(store, Clock::system()))
    }

    fn message(taken: Taken) -> FeedbackMessage {
        match taken {
            Taken::Message(message) => message,
            Taken::Nothing(_) => panic!("nothing was offered"),
        }
    }

    #[test]
    fn records_waiting_are_taken_as_one_message_which_completes_once() {
        let (_dir, feedback) = queues();
        assert!(matches!(
            feedback.take("hub").unwrap(),
            Taken::Nothing(None)
        ));
        let mut seen = feedback.offered();
        seen.mark_unchanged();
        feedback.add("hub", vec![record("a"), record("b")]).unwrap();
        assert!(
            seen.has_changed().unwrap(),
            "new feedback wakes waiting links"
        );
        let first = message(feedback.take("HUB").unwrap());
        assert_eq!(first.records, vec![record("a"), record("b")]);
        assert_eq!(first.delivery_count, 1);
        assert_eq!(
            serde_json::from_slice::<Vec<FeedbackRecord>>(&first.body()).unwrap(),
            first.records
        );
        // Held: nothing more to take until its lock runs out.
        let Taken::Nothing(Some(free_at)) = feedback.take("hub").unwrap() else {
            panic!("a held message was offered again")
        };
        assert!(free_at >= first.locked_until_ms);
        assert!(!feedback.complete("other-hub", &first.lock_token).unwrap());
        assert!(!feedback.complete("hub", "made-up").unwrap());
        assert!(feedback.complete("hub", &first.lock_token).unwrap());
        assert!(
            !feedback.complete("hub", &first.lock_token).unwrap(),
            "twice"
        );
        assert!(matches!(
            feedback.take("hub").unwrap(),
            Taken::Nothing(None)
        ));
    }

    #[test]
    fn an_abandoned_message_comes_back_until_its_deliveries_run_out() {
        let (_dir, feedback) = queues();
        feedback.add("hub", vec![record("a")]).unwrap();
        let mut tokens = Vec::new();
        for delivery in 1..=MAX_FEEDBACK_DELIVERY_COUNT {
            let taken = message(feedback.take("hub").unwrap());
            assert_eq!(taken.delivery_count, delivery);
            assert_eq!(taken.records, vec![record("a")], "the same records");
            assert!(
                !tokens.contains(&taken.lock_token),
                "a new lock each delivery"
            );
            assert!(feedback.abandon("hub", &taken.lock_token).unwrap());
            assert!(
                !feedback.abandon("hub", &taken.lock_token).unwrap(),
                "an abandoned lock holds nothing"
            );
            tokens.push(taken.lock_token);
        }
        assert!(
            matches!(feedback.take("hub").unwrap(), Taken::Nothing(None)),
            "dead-lettered after {MAX_FEEDBACK_DELIVERY_COUNT} deliveries"
        );
    }

    #[test]
    fn a_message_holds_at_most_a_batch_and_the_rest_follows() {
        let (_dir, feedback) = queues();
        let records: Vec<FeedbackRecord> =
            (0..MAX_BATCH + 3).map(|i| record(&i.to_string())).collect();
        feedback.add("hub", records.clone()).unwrap();
        let first = message(feedback.take("hub").unwrap());
        let second = message(feedback.take("hub").unwrap());
        assert_eq!(first.records, records[..MAX_BATCH]);
        assert_eq!(second.records, records[MAX_BATCH..]);
        assert_ne!(first.message_id, second.message_id);
    }

    #[test]
    fn feedback_survives_a_restart_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let held = {
            let feedback =
                Feedback::new(Arc::new(Store::open(dir.path()).unwrap()), Clock::system());
            feedback.add("hub", vec![record("a"), record("b")]).unwrap();
            message(feedback.take("hub").unwrap())
        };
        let feedback = Feedback::new(Arc::new(Store::open(dir.path()).unwrap()), Clock::system());
        assert!(feedback.complete("hub", &held.lock_token).unwrap());
    }
}
