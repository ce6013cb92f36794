//! Durable state: a small document store in SQLite (WAL). Every record is a JSON document
//! under a (kind, key) pair; writes commit before the emulator acknowledges anything, so a kill
//! loses nothing that was acknowledged.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Record kinds. Scoped kinds (enrollments, registrations, devices) put their owner in the key
/// as `owner/id`.
pub mod kind {
    /// `HubRecord` by hub name.
    pub const HUB: &str = "hub";
    /// `DpsRecord` by DPS name.
    pub const DPS: &str = "dps";
    /// `EnrollmentGroup` by `dps/group id`.
    pub const GROUP: &str = "group";
    /// `IndividualEnrollment` by `dps/registration id` (lower case).
    pub const ENROLLMENT: &str = "enrollment";
    /// `RegistrationRecord` by `dps/registration id` (lower case).
    pub const REGISTRATION: &str = "registration";
    /// `HubDevice` by `hub host/device id`.
    pub const DEVICE: &str = "device";
}

/// The SQLite document store.
pub struct Store {
    connection: Mutex<Connection>,
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::Emulator(format!("state store: {e}"))
}

impl Store {
    /// Opens (creating if needed) `state.sqlite3` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("state.sqlite3");
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
                 ) WITHOUT ROWID;",
            )
            .map_err(db_error)?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
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
        let body = serde_json::to_string(value)
            .map_err(|e| Error::Emulator(format!("state store: cannot encode {kind}: {e}")))?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind, key, body],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// Writes several documents in one transaction.
    pub fn put_many(&self, documents: &[(&str, String, String)]) -> Result<()> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(db_error)?;
        for (kind, key, body) in documents {
            tx.execute(
                "INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind, key, body],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    /// Removes a document; true if it existed.
    pub fn delete(&self, kind: &str, key: &str) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "DELETE FROM documents WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map_err(db_error)?;
        Ok(n > 0)
    }

    /// Reads one document.
    pub fn get<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Result<Option<T>> {
        let body: Option<String> = self
            .lock()
            .query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND key = ?2",
                params![kind, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error)?;
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
}

fn decode<T: DeserializeOwned>(kind: &str, body: &str) -> Result<T> {
    serde_json::from_str(body)
        .map_err(|e| Error::Emulator(format!("state store: corrupt {kind} record: {e}")))
}
