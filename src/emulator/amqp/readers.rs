//! Who reads each partition of each consumer group, so that epochs (the Event Hubs clients'
//! `owner_level`, the link property `com.microsoft:epoch`) are honoured as Event Hubs honours
//! them: a reader with an epoch disconnects every reader of the partition with a lower or
//! equal epoch or none (`com.microsoft:receiver-disconnected`, which the clients report as
//! ownership lost); a reader with a lower epoch than one already reading, or without one while
//! one with an epoch reads, is refused; and at most
//! [`MAX_READERS_PER_PARTITION`](crate::limits::MAX_READERS_PER_PARTITION) readers without an
//! epoch read at once. A reader leaves when its link task ends (its [`Membership`] drops).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use fe2o3_amqp::types::primitives::Symbol;
use tokio::sync::Notify;

/// A partition of a consumer group of a hub (names lower case).
pub(crate) type PartitionKey = (String, String, u32);

/// Told when another reader takes the partition over.
#[derive(Debug, Default)]
pub(crate) struct Displaced {
    happened: AtomicBool,
    notify: Notify,
}

impl Displaced {
    fn displace(&self) {
        self.happened.store(true, Ordering::Release);
        // A stored permit: a reader not waiting yet still finds it.
        self.notify.notify_one();
    }

    /// Whether another reader took over.
    pub(crate) fn happened(&self) -> bool {
        self.happened.load(Ordering::Acquire)
    }

    /// Waits until another reader takes over.
    pub(crate) async fn wait(&self) {
        if !self.happened() {
            self.notify.notified().await;
        }
    }
}

struct Reader {
    id: u64,
    epoch: Option<i64>,
    displaced: Arc<Displaced>,
}

/// The readers of every partition.
#[derive(Default)]
pub(crate) struct Readers {
    partitions: Mutex<HashMap<PartitionKey, Vec<Reader>>>,
    next_id: AtomicU64,
}

/// One reader's place; leaving it (dropping it) frees the place.
pub(crate) struct Membership {
    readers: Arc<Readers>,
    key: PartitionKey,
    id: u64,
    /// Set when another reader took over.
    pub(crate) displaced: Arc<Displaced>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut partitions = self
            .readers
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(readers) = partitions.get_mut(&self.key) {
            readers.retain(|r| r.id != self.id);
            if readers.is_empty() {
                partitions.remove(&self.key);
            }
        }
    }
}

fn disconnected(description: String) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(
            crate::protocol::event_hubs::conditions::RECEIVER_DISCONNECTED,
        )),
        Some(description),
        None,
    )
}

impl Readers {
    /// A new reader of `key` with `epoch`, displacing those it outranks; `Err` is the link
    /// error refusing it.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: PartitionKey,
        epoch: Option<i64>,
    ) -> Result<Membership, definitions::Error> {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let readers = partitions.entry(key.clone()).or_default();
        let highest = readers.iter().filter_map(|r| r.epoch).max();
        match (epoch, highest) {
            (Some(new), Some(current)) if new < current => {
                return Err(disconnected(format!(
                    "A reader with epoch {current} reads partition {} of consumer group '{}'; \
                     epoch {new} is lower.",
                    key.2, key.1
                )));
            }
            (None, Some(current)) => {
                return Err(disconnected(format!(
                    "A reader with epoch {current} reads partition {} of consumer group '{}'; \
                     a reader without an epoch cannot join it.",
                    key.2, key.1
                )));
            }
            (None, None) if readers.len() >= crate::limits::MAX_READERS_PER_PARTITION => {
                return Err(definitions::Error::new(
                    AmqpError::ResourceLimitExceeded,
                    Some(format!(
                        "Exceeded the maximum number of allowed receivers per partition in a \
                         consumer group which is {}.",
                        crate::limits::MAX_READERS_PER_PARTITION
                    )),
                    None,
                ));
            }
            (Some(_), _) => {
                for displaced in readers.drain(..) {
                    displaced.displaced.displace();
                }
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let displaced = Arc::new(Displaced::default());
        readers.push(Reader {
            id,
            epoch,
            displaced: displaced.clone(),
        });
        Ok(Membership {
            readers: self.clone(),
            key,
            id,
            displaced,
        })
    }
}

/// The error a displaced reader's link is closed with.
pub(crate) fn displaced_error() -> definitions::Error {
    disconnected("A reader with a higher or equal epoch took this partition over.".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("hub".into(), "$default".into(), 0)
    }

    #[test]
    fn epochs_take_partitions_over_and_plain_readers_are_capped() {
        let readers = Arc::new(Readers::default());
        let plain: Vec<Membership> = (0..crate::limits::MAX_READERS_PER_PARTITION)
            .map(|_| readers.join(key(), None).unwrap())
            .collect();
        assert!(
            readers.join(key(), None).is_err(),
            "a sixth plain reader joined"
        );
        // Another partition is another count.
        let elsewhere = readers
            .join(("hub".into(), "$default".into(), 1), None)
            .unwrap();
        let owner = readers.join(key(), Some(2)).unwrap();
        assert!(plain.iter().all(|m| m.displaced.happened()));
        assert!(!elsewhere.displaced.happened());
        assert!(readers.join(key(), None).is_err());
        assert!(readers.join(key(), Some(1)).is_err());
        let equal = readers.join(key(), Some(2)).unwrap();
        assert!(owner.displaced.happened(), "an equal epoch takes over too");
        drop(equal);
        drop(owner);
        drop(plain);
        // Everyone left: a plain reader may read again.
        assert!(readers.join(key(), None).is_ok());
    }
}
