//! A readable record of what devices and the emulator said to each other, per client id, for
//! learning and debugging (the primer notebook shows one).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Events kept per client before the oldest are dropped.
const MAX_EVENTS_PER_CLIENT: usize = 1_000;

/// One step of an exchange.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceEvent {
    /// Unix time with fractions.
    pub at: f64,
    /// `device->cloud`, `cloud->device` or `note`.
    pub direction: &'static str,
    /// Packet kind (`CONNECT`, `PUBLISH`, ...) or a short label.
    pub kind: String,
    /// Topic, when the packet has one.
    pub topic: Option<String>,
    /// Status code of a DPS or hub response.
    pub status: Option<u16>,
    /// Body text or other detail.
    pub detail: String,
}

/// Collects traces for the clients it was asked to watch.
#[derive(Default)]
pub struct Tracer {
    all: AtomicBool,
    watched: Mutex<HashSet<String>>,
    events: Mutex<HashMap<String, Vec<TraceEvent>>>,
}

impl Tracer {
    /// Starts tracing one client id (case-insensitive), or every client with `None`.
    pub fn watch(&self, client_id: Option<&str>) {
        match client_id {
            None => self.all.store(true, Ordering::Relaxed),
            Some(id) => {
                self.watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_ascii_lowercase());
            }
        }
    }

    /// Stops tracing (one client, or all) without forgetting what was recorded.
    pub fn unwatch(&self, client_id: Option<&str>) {
        match client_id {
            None => {
                self.all.store(false, Ordering::Relaxed);
                self.watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            Some(id) => {
                self.watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id.to_ascii_lowercase());
            }
        }
    }

    /// Whether `client_id` is being traced.
    pub fn is_watching(&self, client_id: &str) -> bool {
        self.all.load(Ordering::Relaxed)
            || self
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&client_id.to_ascii_lowercase())
    }

    /// Records an event for a watched client.
    pub fn record(&self, client_id: &str, event: TraceEvent) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let list = events.entry(client_id.to_ascii_lowercase()).or_default();
        if list.len() >= MAX_EVENTS_PER_CLIENT {
            list.remove(0);
        }
        list.push(event);
    }

    /// What was recorded for a client.
    pub fn events(&self, client_id: &str) -> Vec<TraceEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Current Unix time with fractions.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
