//! Durable state: a small document store in SQLite (WAL). Every record is a JSON document
//! under a (kind, key) pair; writes commit before the emulator acknowledges anything, so a kill
//! loses nothing that was acknowledged. The database and its WAL/SHM files hold every owner and
//! device key, so they are 0600 (Unix).
//!
//! Telemetry is also the hubs' built-in Event Hub-compatible endpoint: each row carries the
//! partition its device lands on (`EventsEndpoint::partition_of`, given by the hub engine when
//! it queues the message), its sequence number within that partition (0, 1, 2, ... per hub and
//! partition) and its offset (the bytes of the partition's log before it: each event takes its
//! body's length plus [`EVENT_OVERHEAD`], so offsets grow and never repeat, as Event Hubs'
//! byte offsets do). Both are assigned inside the commit's transaction from the partition's
//! last row, so they are gap-free and survive restarts. Rows stored before partitions existed
//! are given theirs once, in arrival order, when the hub engine opens the store
//! ([`Store::assign_partitions`]). Readers tail the log without polling: every commit bumps a
//! watch counter ([`Store::telemetry_committed`]). Each row keeps how its sender's connection
//! authenticated ([`SenderAuth`], two columns added to older folders), which its event
//! reports. Events past their hub's retention are
//! deleted ([`Store::drop_telemetry_before`], hourly from the hub engine), except each
//! partition's last, from which its numbers go on.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Record kinds. Scoped kinds (enrollments, registrations, devices) put their owner in the key
/// as `owner/id`.
pub(crate) mod kind {
    /// `HubRecord` by hub name.
    pub(crate) const HUB: &str = "hub";
    /// `DpsRecord` by DPS name.
    pub(crate) const DPS: &str = "dps";
    /// `EnrollmentGroup` by `dps/group id`.
    pub(crate) const GROUP: &str = "group";
    /// `IndividualEnrollment` by `dps/registration id` (lower case).
    pub(crate) const ENROLLMENT: &str = "enrollment";
    /// `RegistrationRecord` by `dps/registration id` (lower case).
    pub(crate) const REGISTRATION: &str = "registration";
    /// `HubDevice` by `hub host/device id`.
    pub(crate) const DEVICE: &str = "device";
    /// `Twin` by `hub host/device id`.
    pub(crate) const TWIN: &str = "twin";
    /// Waiting cloud-to-device messages by `hub host/device id`.
    pub(crate) const C2D: &str = "c2d";
    /// A hub's delivery feedback (records not yet taken, feedback messages) by hub host.
    pub(crate) const FEEDBACK: &str = "feedback";
    /// Subscriptions of a persistent (clean session 0) MQTT session by `hub host/device id`.
    pub(crate) const SESSION: &str = "session";
    /// The local cloud's clock: its offset from the wall clock.
    pub(crate) const CLOCK: &str = "clock";
    /// A Device Registry namespace (`NamespaceRecord`) by name.
    pub(crate) const REGISTRY_NAMESPACE: &str = "registry_namespace";
    /// A namespace's credential policy (`PolicyRecord`) by `namespace/policy`.
    pub(crate) const REGISTRY_POLICY: &str = "registry_policy";
    /// A Device Registry CA's private key (PKCS#8 PEM): the root by `namespace`, an issuing
    /// CA by `namespace/policy`. Secret: the data folder is the owner's only.
    pub(crate) const REGISTRY_KEY: &str = "registry_key";
    /// A DPS's or hub's link to a namespace (`RegistryLink`) by `dps/name` or `hub/name`.
    pub(crate) const REGISTRY_LINK: &str = "registry_link";
}

/// One telemetry message as the hub stored it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TelemetryRecord {
    /// Arrival sequence number (global, increasing).
    pub sequence: i64,
    /// Hub host name (lower case).
    pub hub: String,
    /// Device id.
    pub device_id: String,
    /// Module id, for module messages.
    pub module_id: Option<String>,
    /// Enqueued time, Unix seconds with fractions.
    pub enqueued: f64,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Application properties, in the order sent.
    pub properties: Vec<(String, String)>,
    /// System properties (`mid`, `ct`, `ce`, ...), without the `$.` prefix.
    pub system_properties: Vec<(String, String)>,
    /// How the sending connection authenticated (`None` for rows stored before this was
    /// kept: their events report the identity as it stands when read). Kept in its own
    /// columns, not in the record's JSON form.
    #[serde(skip)]
    pub sender: Option<std::sync::Arc<SenderAuth>>,
}

/// How a device's connection authenticated when it sent a message, as IoT Hub stamps the
/// message (`iothub-connection-auth-method`'s `type`, `iothub-connection-auth-generation-id`):
/// the identity as it was then, not as it is when the event is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderAuth {
    /// `sas` or `x509Certificate`.
    pub kind: String,
    /// The device identity's generation id.
    pub generation_id: String,
}

/// The SQLite document store.
pub struct Store {
    connection: Mutex<Connection>,
    /// Bumped after each telemetry commit (see [`Store::telemetry_committed`]).
    committed: tokio::sync::watch::Sender<u64>,
}

/// What an event adds to its partition's offsets besides its body (its envelope, roughly): an
/// empty body still moves the offset, so no two events share one.
pub(crate) const EVENT_OVERHEAD: i64 = 100;

/// Adds the partition columns to a telemetry table made before they existed (SQLite cannot
/// say `ADD COLUMN IF NOT EXISTS`), and their index.
fn add_partition_columns(connection: &Connection) -> Result<()> {
    let mut present = Vec::new();
    {
        let mut statement = connection
            .prepare("PRAGMA table_info(telemetry)")
            .map_err(db_error)?;
        let names = statement
            .query_map([], |row| row.get::<_, String>(1))
            .map_err(db_error)?;
        for name in names {
            present.push(name.map_err(db_error)?);
        }
    }
    for column in ["partition_id", "partition_seq", "partition_offset"] {
        if !present.iter().any(|p| p == column) {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE telemetry ADD COLUMN {column} INTEGER"
                ))
                .map_err(db_error)?;
        }
    }
    for column in ["auth_type", "auth_generation"] {
        if !present.iter().any(|p| p == column) {
            connection
                .execute_batch(&format!("ALTER TABLE telemetry ADD COLUMN {column} TEXT"))
                .map_err(db_error)?;
        }
    }
    connection
        .execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS telemetry_partition
                 ON telemetry (hub, partition_id, partition_seq);",
        )
        .map_err(db_error)
}

/// Where a reader of a partition starts (the Event Hubs clients' starting positions).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EventPosition {
    /// The first event retained (offset `-1`).
    Start,
    /// After the last event enqueued so far (`@latest`): only new events.
    End,
    /// At or after an offset.
    Offset {
        /// The offset.
        offset: i64,
        /// Whether the event at `offset` itself is read.
        inclusive: bool,
    },
    /// At or after a sequence number.
    Sequence {
        /// The sequence number.
        sequence: i64,
        /// Whether the event numbered `sequence` itself is read.
        inclusive: bool,
    },
    /// At or after an enqueued time.
    Enqueued {
        /// Unix milliseconds.
        millis: i64,
        /// Whether an event enqueued at exactly `millis` is read.
        inclusive: bool,
    },
}

/// One event of a partition, as a reader of the Event Hub-compatible endpoint gets it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    /// Sequence number within the partition.
    pub(crate) sequence: i64,
    /// Offset within the partition.
    pub(crate) offset: i64,
    /// Enqueued time, Unix milliseconds.
    pub(crate) enqueued_millis: i64,
    /// Device id.
    pub(crate) device_id: String,
    /// Module id, for module messages.
    pub(crate) module_id: Option<String>,
    /// Body bytes.
    pub(crate) body: Vec<u8>,
    /// Application properties, in the order sent.
    pub(crate) properties: Vec<(String, String)>,
    /// System properties (`mid`, `ct`, `ce`, ...), without the `$.` prefix.
    pub(crate) system_properties: Vec<(String, String)>,
    /// How the sender authenticated, when the row recorded it.
    pub(crate) sender: Option<SenderAuth>,
}

/// The last event of a partition, and its first, as `$management` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PartitionSummary {
    /// The first sequence number retained (`None`: the partition is empty).
    pub(crate) begin_sequence: Option<i64>,
    /// The last event's sequence number, offset and enqueued time (Unix milliseconds).
    pub(crate) last: Option<(i64, i64, i64)>,
}

/// The (sequence number, offset) the next event of a partition takes.
fn next_position(connection: &Connection, hub: &str, partition: u32) -> Result<(i64, i64)> {
    connection
        .query_row(
            "SELECT partition_seq + 1, partition_offset + length(body) + ?3 FROM telemetry
             WHERE hub = ?1 AND partition_id = ?2 ORDER BY partition_seq DESC LIMIT 1",
            params![hub, partition, EVENT_OVERHEAD],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map(|last| last.unwrap_or((0, 0)))
        .map_err(db_error)
}

/// The sender's auth of a row, when it recorded both halves.
fn stored_sender(kind: Option<String>, generation_id: Option<String>) -> Option<SenderAuth> {
    Some(SenderAuth {
        kind: kind?,
        generation_id: generation_id?,
    })
}

/// A bag stored as JSON, refused (not read as empty) when it does not parse: the record would
/// lose its properties silently.
fn parse_bag(column: usize, text: &str) -> rusqlite::Result<Vec<(String, String)>> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// One document's body, on a connection or inside a transaction.
fn read_body(connection: &Connection, kind: &str, key: &str) -> Result<Option<String>> {
    connection
        .query_row(
            "SELECT body FROM documents WHERE kind = ?1 AND key = ?2",
            params![kind, key],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error)
}

/// Writes one document's body, on a connection or inside a transaction.
fn write_body(connection: &Connection, kind: &str, key: &str, body: &str) -> Result<()> {
    connection
        .execute(
            "INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?1, ?2, ?3)",
            params![kind, key, body],
        )
        .map(|_| ())
        .map_err(db_error)
}

/// Removes one document; true if it existed.
fn delete_body(connection: &Connection, kind: &str, key: &str) -> Result<bool> {
    connection
        .execute(
            "DELETE FROM documents WHERE kind = ?1 AND key = ?2",
            params![kind, key],
        )
        .map(|n| n > 0)
        .map_err(db_error)
}

fn encode<T: Serialize>(kind: &str, value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::emulator_caused(format!("state store: cannot encode {kind}"), e))
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::emulator_caused("state store", e)
}

impl Store {
    /// Opens (creating if needed) `state.sqlite3` in `data_dir`, owner-only: the database is
    /// created 0600 before SQLite opens it (SQLite gives its WAL and SHM files the database's
    /// mode), and files an older run left looser are tightened first.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("state.sqlite3");
        crate::emulator::secrets::private_file(&path)?;
        for suffix in crate::emulator::secrets::SQLITE_SIDE_FILES {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            crate::emulator::secrets::private_file_if_present(Path::new(&side))?;
        }
        let connection = Connection::open(&path).map_err(db_error)?;
        // WAL + NORMAL: a commit survives a process kill (not a power cut) without an fsync per
        // write, which keeps registration throughput high.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS documents (
                     kind TEXT NOT NULL,
                     key  TEXT NOT NULL,
                     body TEXT NOT NULL,
                     PRIMARY KEY (kind, key)
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS telemetry (
                     sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
                     hub        TEXT NOT NULL,
                     device_id  TEXT NOT NULL,
                     module_id  TEXT,
                     enqueued   REAL NOT NULL,
                     body       BLOB NOT NULL,
                     properties TEXT NOT NULL,
                     system     TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS telemetry_device ON telemetry (hub, device_id);",
            )
            .map_err(db_error)?;
        add_partition_columns(&connection)?;
        Ok(Store {
            connection: Mutex::new(connection),
            committed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A counter bumped after every telemetry commit: a reader marks it seen, reads, and when
    /// it found nothing new waits for the next change (no commit can slip between the two).
    pub(crate) fn telemetry_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it is transactional),
        // so a poisoned lock is still usable.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Inserts or replaces a document.
    pub fn put<T: Serialize>(&self, kind: &str, key: &str, value: &T) -> Result<()> {
        write_body(&self.lock(), kind, key, &encode(kind, value)?)
    }

    /// Writes several documents in one transaction.
    pub fn put_many(&self, documents: &[(&str, String, String)]) -> Result<()> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db_error)?;
        for (kind, key, body) in documents {
            write_body(&tx, kind, key, body)?;
        }
        tx.commit().map_err(db_error)
    }

    /// Reads, changes and writes back one document atomically: `change` gets the document
    /// (`None` if absent) and returns what to store (`None` deletes it) with its result. It runs
    /// under the store's own lock, so concurrent read-modify-write cycles (two C2D messages
    /// queued at once) cannot lose each other's update; it must only compute, never call out.
    pub fn update<T, R>(
        &self,
        kind: &str,
        key: &str,
        change: impl FnOnce(Option<T>) -> Result<(Option<T>, R)>,
    ) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db_error)?;
        let current = read_body(&tx, kind, key)?
            .map(|b| decode(kind, &b))
            .transpose()?;
        let (next, result) = change(current)?;
        match next {
            Some(value) => write_body(&tx, kind, key, &encode(kind, &value)?)?,
            None => {
                delete_body(&tx, kind, key)?;
            }
        }
        tx.commit().map_err(db_error)?;
        Ok(result)
    }

    /// Removes a document; true if it existed.
    pub fn delete(&self, kind: &str, key: &str) -> Result<bool> {
        delete_body(&self.lock(), kind, key)
    }

    /// Reads one document.
    pub fn get<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Result<Option<T>> {
        let body = read_body(&self.lock(), kind, key)?;
        body.map(|b| decode(kind, &b)).transpose()
    }

    /// Every document of a kind, ordered by key.
    pub fn all<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT body FROM documents WHERE kind = ?1 ORDER BY key")
            .map_err(db_error)?;
        let rows = statement
            .query_map(params![kind], |row| row.get::<_, String>(0))
            .map_err(db_error)?;
        let mut out = Vec::new();
        for body in rows {
            out.push(decode(kind, &body.map_err(db_error)?)?);
        }
        Ok(out)
    }

    /// Every document of a kind with its key, ordered by key (for state whose owner is only
    /// in its key, such as a device's C2D queue).
    pub(crate) fn all_keyed<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<(String, T)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT key, body FROM documents WHERE kind = ?1 ORDER BY key")
            .map_err(db_error)?;
        let rows = statement
            .query_map(params![kind], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(db_error)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, body) = row.map_err(db_error)?;
            out.push((key, decode(kind, &body)?));
        }
        Ok(out)
    }
}

impl Store {
    /// Appends telemetry in one transaction (the caller acknowledges after this returns), each
    /// message on its partition (`None`: its hub is gone, so no reader will ask), numbered
    /// after the partition's last event.
    pub fn append_telemetry(&self, records: &[(TelemetryRecord, Option<u32>)]) -> Result<()> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db_error)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO telemetry (hub, device_id, module_id, enqueued, body, properties, system,
                                            partition_id, partition_seq, partition_offset,
                                            auth_type, auth_generation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(db_error)?;
            // The next (sequence, offset) of each partition this batch touches.
            let mut next: std::collections::HashMap<(String, u32), (i64, i64)> =
                std::collections::HashMap::new();
            for (r, partition) in records {
                let position = match partition {
                    Some(p) => {
                        let slot = match next.entry((r.hub.clone(), *p)) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(next_position(&tx, &r.hub, *p)?)
                            }
                        };
                        let at = *slot;
                        *slot = (at.0 + 1, at.1 + r.body.len() as i64 + EVENT_OVERHEAD);
                        Some(at)
                    }
                    None => None,
                };
                // Pairs of strings always serialise.
                let properties =
                    serde_json::to_string(&r.properties).unwrap_or_else(|_| "[]".into());
                let system =
                    serde_json::to_string(&r.system_properties).unwrap_or_else(|_| "[]".into());
                insert
                    .execute(params![
                        r.hub,
                        r.device_id,
                        r.module_id,
                        r.enqueued,
                        r.body,
                        properties,
                        system,
                        partition,
                        position.map(|p| p.0),
                        position.map(|p| p.1),
                        r.sender.as_ref().map(|a| a.kind.as_str()),
                        r.sender.as_ref().map(|a| a.generation_id.as_str())
                    ])
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)?;
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Deletes a hub's events enqueued before `before` (Unix seconds), as Event Hubs drops
    /// events past its retention, except each partition's last event: it carries the numbers
    /// the partition goes on from (sequence numbers and offsets never start over) and what
    /// `$management` reports as last enqueued. Deleted in slices, so telemetry commits are
    /// held up for one slice at a time; returns how many went.
    pub(crate) fn drop_telemetry_before(&self, hub: &str, before: f64) -> Result<usize> {
        const SLICE: i64 = 5_000;
        let mut dropped = 0;
        loop {
            let gone = self
                .lock()
                .execute(
                    "DELETE FROM telemetry WHERE sequence IN (
                         SELECT sequence FROM telemetry
                         WHERE hub = ?1 AND enqueued < ?2 AND sequence NOT IN (
                             SELECT max(sequence) FROM telemetry WHERE hub = ?1
                             GROUP BY partition_id)
                         LIMIT ?3)",
                    params![hub, before, SLICE],
                )
                .map_err(db_error)?;
            dropped += gone;
            if (gone as i64) < SLICE {
                return Ok(dropped);
            }
        }
    }

    /// Gives the telemetry a hub stored before partitions existed its partitions, sequence
    /// numbers and offsets, in arrival order after any already numbered (once: the rows it
    /// numbers are no longer unnumbered). `partition_of` places a device.
    pub(crate) fn assign_partitions(
        &self,
        hub: &str,
        partition_of: impl Fn(&str) -> u32,
    ) -> Result<usize> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db_error)?;
        let rows: Vec<(i64, String, i64)> = {
            let mut statement = tx
                .prepare(
                    "SELECT sequence, device_id, length(body) FROM telemetry
                     WHERE hub = ?1 AND partition_id IS NULL ORDER BY sequence",
                )
                .map_err(db_error)?;
            let rows = statement
                .query_map(params![hub], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .map_err(db_error)?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(db_error)?
        };
        let mut next: std::collections::HashMap<u32, (i64, i64)> = std::collections::HashMap::new();
        for (sequence, device_id, length) in &rows {
            let partition = partition_of(device_id);
            let slot = match next.entry(partition) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(next_position(&tx, hub, partition)?)
                }
            };
            tx.execute(
                "UPDATE telemetry SET partition_id = ?1, partition_seq = ?2, partition_offset = ?3
                 WHERE sequence = ?4",
                params![partition, slot.0, slot.1, sequence],
            )
            .map_err(db_error)?;
            *slot = (slot.0 + 1, slot.1 + length + EVENT_OVERHEAD);
        }
        tx.commit().map_err(db_error)?;
        Ok(rows.len())
    }

    /// The sequence number a reader starting at `position` reads first (the next one to be
    /// enqueued when nothing stored qualifies), never one enqueued before `retained_since`
    /// (Unix milliseconds: events past the hub's retention are gone, as on Azure).
    pub(crate) fn partition_start(
        &self,
        hub: &str,
        partition: u32,
        position: &EventPosition,
        retained_since: i64,
    ) -> Result<i64> {
        let connection = self.lock();
        let end = next_position(&connection, hub, partition)?.0;
        let first_where = |condition: &str, value: i64| -> Result<i64> {
            connection
                .query_row(
                    &format!(
                        "SELECT min(partition_seq) FROM telemetry
                         WHERE hub = ?1 AND partition_id = ?2 AND {condition}"
                    ),
                    params![hub, partition, value],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .map(|found| found.unwrap_or(end))
                .map_err(db_error)
        };
        let retained = first_where("CAST(enqueued * 1000 AS INTEGER) >= ?3", retained_since)?;
        let asked = match *position {
            EventPosition::Start => first_where("partition_seq >= ?3", 0),
            EventPosition::End => Ok(end),
            EventPosition::Offset { offset, inclusive } => first_where(
                if inclusive {
                    "partition_offset >= ?3"
                } else {
                    "partition_offset > ?3"
                },
                offset,
            ),
            EventPosition::Sequence {
                sequence,
                inclusive,
            } => Ok(if inclusive { sequence } else { sequence + 1 }.max(0)),
            // Compared in whole milliseconds, as the events carry their times, so an event's
            // own time as an exclusive start skips exactly that event.
            EventPosition::Enqueued { millis, inclusive } => first_where(
                if inclusive {
                    "CAST(enqueued * 1000 AS INTEGER) >= ?3"
                } else {
                    "CAST(enqueued * 1000 AS INTEGER) > ?3"
                },
                millis,
            ),
        }?;
        Ok(asked.max(retained))
    }

    /// Up to `limit` events of a partition from sequence number `from` on, in order.
    pub(crate) fn partition_events(
        &self,
        hub: &str,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT partition_seq, partition_offset, CAST(enqueued * 1000 AS INTEGER),
                        device_id, module_id, body, properties, system, auth_type, auth_generation
                 FROM telemetry WHERE hub = ?1 AND partition_id = ?2 AND partition_seq >= ?3
                 ORDER BY partition_seq LIMIT ?4",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map(
                params![
                    hub,
                    partition,
                    from,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |row| {
                    Ok(StoredEvent {
                        sequence: row.get(0)?,
                        offset: row.get(1)?,
                        enqueued_millis: row.get(2)?,
                        device_id: row.get(3)?,
                        module_id: row.get(4)?,
                        body: row.get(5)?,
                        properties: parse_bag(6, &row.get::<_, String>(6)?)?,
                        system_properties: parse_bag(7, &row.get::<_, String>(7)?)?,
                        sender: stored_sender(row.get(8)?, row.get(9)?),
                    })
                },
            )
            .map_err(db_error)?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_error)
    }

    /// A partition's first event retained (enqueued at or after `retained_since`, Unix
    /// milliseconds) and its last event.
    pub(crate) fn partition_summary(
        &self,
        hub: &str,
        partition: u32,
        retained_since: i64,
    ) -> Result<PartitionSummary> {
        let connection = self.lock();
        let begin = connection
            .query_row(
                "SELECT min(partition_seq) FROM telemetry WHERE hub = ?1 AND partition_id = ?2
                 AND CAST(enqueued * 1000 AS INTEGER) >= ?3",
                params![hub, partition, retained_since],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map_err(db_error)?;
        let last = connection
            .query_row(
                "SELECT partition_seq, partition_offset, CAST(enqueued * 1000 AS INTEGER)
                 FROM telemetry WHERE hub = ?1 AND partition_id = ?2
                 ORDER BY partition_seq DESC LIMIT 1",
                params![hub, partition],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(db_error)?;
        Ok(PartitionSummary {
            begin_sequence: begin,
            last,
        })
    }

    /// Telemetry of a hub in arrival order, optionally of one device.
    pub fn telemetry(&self, hub: &str, device_id: Option<&str>) -> Result<Vec<TelemetryRecord>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT sequence, hub, device_id, module_id, enqueued, body, properties, system,
                        auth_type, auth_generation
                 FROM telemetry WHERE hub = ?1 AND (?2 IS NULL OR device_id = ?2) ORDER BY sequence",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map(params![hub, device_id], |row| {
                let properties: String = row.get(6)?;
                let system: String = row.get(7)?;
                Ok(TelemetryRecord {
                    sequence: row.get(0)?,
                    hub: row.get(1)?,
                    device_id: row.get(2)?,
                    module_id: row.get(3)?,
                    enqueued: row.get(4)?,
                    body: row.get(5)?,
                    // A bag that does not parse is refused, not read as empty: the record
                    // would lose its properties silently.
                    properties: serde_json::from_str(&properties).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            6,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                    system_properties: serde_json::from_str(&system).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            7,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                    sender: stored_sender(row.get(8)?, row.get(9)?).map(std::sync::Arc::new),
                })
            })
            .map_err(db_error)?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_error)
    }
}

impl Store {
    /// The size of each message a hub stored since `since` (Unix seconds), body and
    /// properties as IoT Hub counts them: what its daily quota metered.
    pub fn telemetry_sizes_since(&self, hub: &str, since: f64) -> Result<Vec<usize>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT length(body), properties, system FROM telemetry WHERE hub = ?1 AND enqueued >= ?2",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map(params![hub, since], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(db_error)?;
        let mut sizes = Vec::new();
        for row in rows {
            let (body, properties, system) = row.map_err(db_error)?;
            let mut size = usize::try_from(body).unwrap_or(0);
            for bag in [properties, system] {
                let pairs: Vec<(String, String)> = serde_json::from_str(&bag).map_err(|e| {
                    Error::config_caused("stored telemetry properties do not parse", e)
                })?;
                size += pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            }
            sizes.push(size);
        }
        Ok(sizes)
    }
}

/// Called once the message's transaction committed (`true`) or failed (`false`).
pub(crate) type OnCommit = Box<dyn FnOnce(bool) + Send>;

/// Commits telemetry in batches on its own thread: every message waiting when a commit starts
/// joins it, so durability costs one transaction per batch instead of one per message.
///
/// What waits is bounded in bytes, not in messages: a sender waits only while
/// [`MAX_WAITING_BYTES`] are already waiting, so a flood slows the connections that send it
/// instead of growing memory, while ten thousand devices with a few small messages each in
/// flight never wait (a count bound small enough to matter stalled them, and their PUBACKs).
pub(crate) struct TelemetryWriter {
    queue: std::sync::mpsc::Sender<Job>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// Joined by [`TelemetryWriter::stop`], so the store is closed once the emulator stops.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A message waiting for its commit, holding its share of the byte budget until then.
type Waiting = (
    TelemetryRecord,
    Option<u32>,
    OnCommit,
    tokio::sync::OwnedSemaphorePermit,
);

/// What the writer thread is asked to do.
// `Stop` is sent once per emulator; boxing every `Append` would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Job {
    Append(Waiting),
    /// Commit what came before, then let go of the store.
    Stop,
}

/// Most messages in one transaction.
const MAX_BATCH: usize = 1024;
/// Bytes of telemetry (bodies and properties, plus a fixed cost per message) that may wait.
pub(crate) const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;
/// What a message costs besides its body and properties (the record, the callback, the queue).
const COST_PER_MESSAGE: usize = 256;

impl TelemetryWriter {
    /// Starts the writer thread.
    pub(crate) fn start(store: std::sync::Arc<Store>) -> Result<Self> {
        let (queue, incoming) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("dpskit-telemetry-writer".into())
            .spawn(move || {
                let mut stopping = false;
                while !stopping && let Ok(Job::Append(first)) = incoming.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match incoming.try_recv() {
                            Ok(Job::Append(next)) => batch.push(next),
                            Ok(Job::Stop) => {
                                stopping = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let mut records = Vec::with_capacity(batch.len());
                    let mut callbacks = Vec::with_capacity(batch.len());
                    let mut permits = Vec::with_capacity(batch.len());
                    for (record, partition, callback, permit) in batch {
                        records.push((record, partition));
                        callbacks.push(callback);
                        permits.push(permit);
                    }
                    let committed = match store.append_telemetry(&records) {
                        Ok(()) => true,
                        Err(e) => {
                            log::error!(
                                "emulator: storing {} telemetry messages failed: {e}",
                                records.len()
                            );
                            false
                        }
                    };
                    drop(records);
                    drop(permits);
                    // In commit order, so PUBACKs leave in the order the PUBLISHes arrived.
                    for callback in callbacks {
                        callback(committed);
                    }
                }
            })
            .map_err(|e| Error::emulator_caused("cannot start the telemetry writer", e))?;
        Ok(TelemetryWriter {
            queue,
            budget: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_BYTES)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Commits what is queued and stops the thread, releasing its hold on the store: once this
    /// returns, a later emulator on the same folder finds no connection of this one closing
    /// (and deleting the WAL it would have found). Later appends fail.
    pub(crate) fn stop(&self) {
        let _ = self.queue.send(Job::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            log::error!("emulator: the telemetry writer panicked");
        }
    }

    /// Queues a message for its partition of the hub's events, waiting while
    /// [`MAX_WAITING_BYTES`] already wait; `on_commit` runs on the writer thread once it is
    /// committed.
    pub(crate) async fn append(
        &self,
        record: TelemetryRecord,
        partition: Option<u32>,
        on_commit: OnCommit,
    ) -> Result<()> {
        let stopped = || Error::emulator("the telemetry writer stopped");
        let cost = record.body.len()
            + record
                .properties
                .iter()
                .chain(&record.system_properties)
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + COST_PER_MESSAGE;
        let cost = u32::try_from(cost.min(MAX_WAITING_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| stopped())?;
        self.queue
            .send(Job::Append((record, partition, on_commit, permit)))
            .map_err(|_| stopped())
    }

    /// Queues a message and waits until it is committed.
    #[cfg(test)]
    pub(crate) async fn append_and_wait(&self, record: TelemetryRecord) -> Result<()> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.append(
            record,
            Some(0),
            Box::new(move |ok| {
                let _ = done.send(ok);
            }),
        )
        .await?;
        match committed.await {
            Ok(true) => Ok(()),
            _ => Err(Error::emulator("the telemetry could not be stored")),
        }
    }
}

fn decode<T: DeserializeOwned>(kind: &str, body: &str) -> Result<T> {
    serde_json::from_str(body)
        .map_err(|e| Error::emulator_caused(format!("state store: corrupt {kind} record"), e))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    use super::*;

    fn record(body_bytes: usize) -> TelemetryRecord {
        TelemetryRecord {
            sequence: 0,
            hub: "hub".into(),
            device_id: "dev".into(),
            module_id: None,
            enqueued: 0.0,
            body: vec![7; body_bytes],
            properties: vec![],
            system_properties: vec![],
            sender: None,
        }
    }

    #[test]
    fn the_telemetry_writer_makes_senders_wait_once_its_byte_budget_is_spent() {
        let folder = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(folder.path()).unwrap());
        let writer = TelemetryWriter::start(store.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        const MIB: usize = 1024 * 1024;
        let fits = MAX_WAITING_BYTES / (MIB + COST_PER_MESSAGE);
        // The writer cannot commit while the store is held: nothing leaves the budget.
        let held = store.lock();
        for _ in 0..fits {
            runtime
                .block_on(writer.append(record(MIB), Some(0), Box::new(|_| {})))
                .unwrap();
        }
        let mut one_more = Box::pin(writer.append(record(MIB), Some(0), Box::new(|_| {})));
        let mut context = Context::from_waker(Waker::noop());
        assert!(
            one_more.as_mut().poll(&mut context).is_pending(),
            "a sender past {MAX_WAITING_BYTES} waiting bytes did not wait"
        );
        drop(held);
        // Once the waiting messages are committed, their bytes are free and the sender goes on.
        runtime.block_on(one_more).unwrap();
        runtime
            .block_on(writer.append_and_wait(record(10)))
            .unwrap();
        assert_eq!(store.telemetry("hub", None).unwrap().len(), fits + 2);
    }

    /// Events past the retention go, each partition keeps its last one, and the numbering of
    /// a partition emptied by the retention goes on where it stopped.
    #[test]
    fn retention_drops_old_events_but_never_restarts_a_partitions_numbers() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(folder.path()).unwrap();
        let at = |enqueued: f64, partition: u32| {
            let mut r = record(4);
            r.enqueued = enqueued;
            (r, Some(partition))
        };
        store
            .append_telemetry(&[at(100.0, 0), at(101.0, 0), at(102.0, 1), at(500.0, 0)])
            .unwrap();
        store.append_telemetry(&[at(103.0, 1)]).unwrap();
        assert_eq!(store.drop_telemetry_before("hub", 400.0).unwrap(), 3);
        assert_eq!(store.drop_telemetry_before("other-hub", 400.0).unwrap(), 0);
        let left: Vec<(f64, i64)> = store
            .telemetry("hub", None)
            .unwrap()
            .iter()
            .map(|r| (r.enqueued, r.sequence))
            .collect();
        assert_eq!(left, [(500.0, 4), (103.0, 5)]);
        // Partition 1 holds only its last event, past the retention: read from the retention
        // on it is empty, yet it still tells its last event and numbers on from it.
        let summary = store.partition_summary("hub", 1, 400_000).unwrap();
        assert_eq!(summary.begin_sequence, None);
        assert_eq!(summary.last.map(|l| l.0), Some(1));
        store.append_telemetry(&[at(600.0, 1)]).unwrap();
        let partition_1 = store.partition_events("hub", 1, 0, 10).unwrap();
        assert_eq!(
            partition_1.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(store.drop_telemetry_before("hub", 10_000.0).unwrap(), 1);
    }

    #[test]
    fn a_stored_property_bag_that_does_not_parse_is_refused_not_read_as_empty() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(folder.path()).unwrap();
        let mut kept = record(3);
        kept.properties = vec![("unit".into(), "C".into())];
        store.append_telemetry(&[(kept, Some(0))]).unwrap();
        assert_eq!(store.telemetry("hub", None).unwrap()[0].properties.len(), 1);
        assert_eq!(
            store.telemetry_sizes_since("hub", 0.0).unwrap(),
            vec![3 + 5]
        );
        store
            .lock()
            .execute("UPDATE telemetry SET properties = 'not json'", [])
            .unwrap();
        assert!(store.telemetry("hub", None).is_err());
        assert!(store.telemetry_sizes_since("hub", 0.0).is_err());
    }

    fn from(device: &str, body: &str, enqueued: f64) -> TelemetryRecord {
        TelemetryRecord {
            device_id: device.into(),
            enqueued,
            body: body.as_bytes().to_vec(),
            ..record(0)
        }
    }

    #[test]
    fn each_partition_numbers_its_events_and_offsets_from_zero_without_gaps() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(folder.path()).unwrap();
        let mut seen = store.telemetry_committed();
        seen.borrow_and_update();
        store
            .append_telemetry(&[
                (from("a", "12345", 10.0), Some(0)),
                (from("b", "x", 10.5), Some(1)),
                (from("a", "", 11.0), Some(0)),
            ])
            .unwrap();
        assert!(seen.has_changed().unwrap(), "a commit wakes the readers");
        store
            .append_telemetry(&[
                (from("a", "later", 12.25), Some(0)),
                (from("gone", "?", 13.0), None),
            ])
            .unwrap();
        let events = store.partition_events("hub", 0, 0, 10).unwrap();
        let numbered: Vec<(i64, i64, i64)> = events
            .iter()
            .map(|e| (e.sequence, e.offset, e.enqueued_millis))
            .collect();
        // Offsets advance by the body plus the envelope, so an empty body still moves them.
        assert_eq!(
            numbered,
            vec![
                (0, 0, 10_000),
                (1, 5 + EVENT_OVERHEAD, 11_000),
                (2, 5 + 2 * EVENT_OVERHEAD, 12_250)
            ]
        );
        assert_eq!(
            store.partition_events("hub", 1, 0, 10).unwrap()[0].sequence,
            0
        );
        // Pages: from a sequence number, at most `limit`.
        let page = store.partition_events("hub", 0, 1, 1).unwrap();
        assert_eq!((page.len(), page[0].body.as_slice()), (1, &b""[..]));
        assert_eq!(
            store.partition_summary("hub", 0, 0).unwrap(),
            PartitionSummary {
                begin_sequence: Some(0),
                last: Some((2, 5 + 2 * EVENT_OVERHEAD, 12_250)),
            }
        );
        assert_eq!(
            store.partition_summary("hub", 3, 0).unwrap(),
            PartitionSummary::default()
        );
        let start = |position| store.partition_start("hub", 0, &position, 0).unwrap();
        assert_eq!(start(EventPosition::Start), 0);
        assert_eq!(start(EventPosition::End), 3);
        let second = 5 + EVENT_OVERHEAD;
        assert_eq!(
            start(EventPosition::Offset {
                offset: second,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(EventPosition::Offset {
                offset: second,
                inclusive: false
            }),
            2
        );
        assert_eq!(
            start(EventPosition::Offset {
                offset: 1,
                inclusive: false
            }),
            1
        );
        assert_eq!(
            start(EventPosition::Offset {
                offset: 1_000_000,
                inclusive: false
            }),
            3
        );
        assert_eq!(
            start(EventPosition::Sequence {
                sequence: 1,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(EventPosition::Sequence {
                sequence: 1,
                inclusive: false
            }),
            2
        );
        assert_eq!(
            start(EventPosition::Sequence {
                sequence: -1,
                inclusive: false
            }),
            0
        );
        assert_eq!(
            start(EventPosition::Enqueued {
                millis: 11_000,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(EventPosition::Enqueued {
                millis: 11_000,
                inclusive: false
            }),
            2
        );
        assert_eq!(
            start(EventPosition::Enqueued {
                millis: 99_000,
                inclusive: false
            }),
            3
        );
        // Past the retention: what was enqueued before 11 s is gone for every position.
        let retained = |position| store.partition_start("hub", 0, &position, 11_000).unwrap();
        assert_eq!(retained(EventPosition::Start), 1);
        assert_eq!(
            retained(EventPosition::Sequence {
                sequence: 0,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            retained(EventPosition::Offset {
                offset: 0,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            retained(EventPosition::Sequence {
                sequence: 2,
                inclusive: true
            }),
            2
        );
        assert_eq!(
            store
                .partition_summary("hub", 0, 11_000)
                .unwrap()
                .begin_sequence,
            Some(1)
        );
        assert_eq!(
            store
                .partition_summary("hub", 0, 99_000)
                .unwrap()
                .begin_sequence,
            None
        );
    }

    #[test]
    fn telemetry_stored_before_partitions_is_numbered_once_in_arrival_order_and_survives_a_reopen()
    {
        let folder = tempfile::tempdir().unwrap();
        {
            // The table as emulators before the events endpoint made it.
            let old = Connection::open(folder.path().join("state.sqlite3")).unwrap();
            old.execute_batch(
                "CREATE TABLE telemetry (
                     sequence INTEGER PRIMARY KEY AUTOINCREMENT, hub TEXT NOT NULL,
                     device_id TEXT NOT NULL, module_id TEXT, enqueued REAL NOT NULL,
                     body BLOB NOT NULL, properties TEXT NOT NULL, system TEXT NOT NULL);
                 INSERT INTO telemetry (hub, device_id, enqueued, body, properties, system) VALUES
                     ('hub', 'a', 1.0, X'31', '[]', '[]'),
                     ('hub', 'b', 2.0, X'32', '[]', '[]'),
                     ('hub', 'a', 3.0, X'33', '[]', '[]');",
            )
            .unwrap();
        }
        let store = Store::open(folder.path()).unwrap();
        let partition_of = |device: &str| u32::from(device == "b");
        assert_eq!(store.assign_partitions("hub", partition_of).unwrap(), 3);
        assert_eq!(
            store.assign_partitions("hub", partition_of).unwrap(),
            0,
            "only once"
        );
        store
            .append_telemetry(&[(from("a", "4", 4.0), Some(0))])
            .unwrap();
        let bodies: Vec<(i64, Vec<u8>)> = store
            .partition_events("hub", 0, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.sequence, e.body))
            .collect();
        assert_eq!(
            bodies,
            vec![(0, b"1".to_vec()), (1, b"3".to_vec()), (2, b"4".to_vec())]
        );
        drop(store);
        let reopened = Store::open(folder.path()).unwrap();
        assert_eq!(
            reopened.partition_events("hub", 1, 0, 10).unwrap()[0].body,
            b"2"
        );
        assert_eq!(
            reopened
                .partition_start("hub", 0, &EventPosition::End, 0)
                .unwrap(),
            3
        );
    }
}
