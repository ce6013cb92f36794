//! A readable record of what devices and the emulator said to each other, per client id, for
//! learning and debugging (the primer notebook shows one).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Events kept per client before the oldest are dropped.
const MAX_EVENTS_PER_CLIENT: usize = 1_000;
/// Clients traced at once; beyond, new client ids are not recorded (tracing every client of a
/// fleet must not grow without bound).
const MAX_TRACED_CLIENTS: usize = 10_000;
/// Longest detail kept per event (a 256 KB telemetry body is cut, with its length noted).
const MAX_DETAIL_BYTES: usize = 4 * 1024;

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
    /// Whether `watched` holds anyone: the question every packet of every session asks, so
    /// the answer for an untraced fleet costs no lock.
    any_watched: AtomicBool,
    watched: Mutex<HashSet<String>>,
    events: Mutex<HashMap<String, VecDeque<TraceEvent>>>,
}

impl Tracer {
    /// Starts tracing one client id (case-insensitive), or every client with `None`.
    pub fn watch(&self, client_id: Option<&str>) {
        match client_id {
            None => self.all.store(true, Ordering::Relaxed),
            Some(id) => {
                let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
                watched.insert(id.to_ascii_lowercase());
                self.any_watched.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Stops tracing (one client, or all) without forgetting what was recorded.
    pub fn unwatch(&self, client_id: Option<&str>) {
        match client_id {
            None => {
                self.all.store(false, Ordering::Relaxed);
                let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
                watched.clear();
                self.any_watched.store(false, Ordering::Relaxed);
            }
            Some(id) => {
                let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
                watched.remove(&id.to_ascii_lowercase());
                self.any_watched
                    .store(!watched.is_empty(), Ordering::Relaxed);
            }
        }
    }

    /// Whether `client_id` is being traced.
    pub fn is_watching(&self, client_id: &str) -> bool {
        self.all.load(Ordering::Relaxed)
            || self.any_watched.load(Ordering::Relaxed)
                && self
                    .watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&client_id.to_ascii_lowercase())
    }

    /// Records an event for a watched client.
    pub fn record(&self, client_id: &str, mut event: TraceEvent) {
        if event.detail.len() > MAX_DETAIL_BYTES {
            let total = event.detail.len();
            let mut cut = MAX_DETAIL_BYTES;
            while !event.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            event.detail.truncate(cut);
            event.detail.push_str(&format!("… ({total} bytes in all)"));
        }
        let client = client_id.to_ascii_lowercase();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if !events.contains_key(&client) && events.len() >= MAX_TRACED_CLIENTS {
            return;
        }
        let list = events.entry(client).or_default();
        if list.len() >= MAX_EVENTS_PER_CLIENT {
            list.pop_front();
        }
        list.push_back(event);
    }

    /// What was recorded for a client.
    pub fn events(&self, client_id: &str) -> Vec<TraceEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client_id.to_ascii_lowercase())
            .map(|list| list.iter().cloned().collect())
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
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail: String) -> TraceEvent {
        TraceEvent {
            at: 0.0,
            direction: "device->cloud",
            kind: "PUBLISH".into(),
            topic: None,
            status: None,
            detail,
        }
    }

    #[test]
    fn traces_are_bounded_per_event_per_client_and_in_clients() {
        let tracer = Tracer::default();
        tracer.watch(None);
        tracer.record("big", event("é".repeat(100_000)));
        let [big] = &tracer.events("big")[..] else {
            panic!("one event")
        };
        assert!(
            big.detail.len() < MAX_DETAIL_BYTES + 64,
            "{}",
            big.detail.len()
        );
        assert!(big.detail.ends_with("(200000 bytes in all)"));
        for i in 0..MAX_EVENTS_PER_CLIENT + 5 {
            tracer.record("chatty", event(i.to_string()));
        }
        let chatty = tracer.events("chatty");
        assert_eq!(chatty.len(), MAX_EVENTS_PER_CLIENT);
        assert_eq!(chatty[0].detail, "5", "the oldest go first");
        for i in 0..MAX_TRACED_CLIENTS + 10 {
            tracer.record(&format!("client-{i}"), event(String::new()));
        }
        assert_eq!(
            tracer.events.lock().unwrap().len(),
            MAX_TRACED_CLIENTS,
            "no more clients than the bound"
        );
        assert!(
            tracer
                .events(&format!("client-{}", MAX_TRACED_CLIENTS + 5))
                .is_empty()
        );
    }
}
