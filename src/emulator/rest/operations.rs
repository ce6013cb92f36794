//! ARM's long-running operations, as the `Microsoft.Devices` provider runs them: a hub or DPS
//! create, update or delete answers at once (201, 200 or 202) with an `Azure-AsyncOperation`
//! URL (and, for a delete, a `Location`) and a `Retry-After`; the operation is `Running` for
//! the configured latency, then `Succeeded`. Meanwhile the resource reports `Activating`,
//! `Transitioning` or `Deleting`; a resource being deleted has already left the [`Cloud`]
//! (devices can no longer reach it) but its last view is kept here, so a GET still shows it and
//! its name stays taken (a PUT gets 409), until the operation ends.
//!
//! Kept in memory: after a restart an operation under way has simply completed.
//!
//! [`Cloud`]: crate::emulator::Cloud

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// The resource types whose writes are long-running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `Microsoft.Devices/IotHubs`.
    Hub,
    /// `Microsoft.Devices/provisioningServices`.
    Dps,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Create,
    Update,
    Delete,
}

/// One operation.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) kind: Kind,
    /// The resource's name.
    pub(crate) name: String,
    pub(crate) action: Action,
    /// The resource's region (hub operations are watched under it).
    pub(crate) location: String,
    done_at: Instant,
}

impl Operation {
    /// Time left before it succeeds (zero once done).
    pub(crate) fn remaining(&self) -> Duration {
        self.done_at.saturating_duration_since(Instant::now())
    }
}

/// What a resource is doing, as its GET shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// Nothing under way.
    Settled,
    /// Being created (`Activating`) or updated (`Transitioning`), by operation `id`.
    Busy { action: Action, id: String },
    /// Being deleted by operation `id`: `view` is its last GET, already marked `Deleting`.
    Deleting { id: String, view: Value },
}

/// Operations ever kept at once; the oldest finished ones make room past it.
const MAX_OPERATIONS: usize = 4096;
/// How long a finished operation can still be polled.
const KEPT_AFTER_DONE: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    operations: HashMap<String, Operation>,
    /// Per resource (kind, lower-case name): the operation under way and, for a delete, the
    /// resource's last view.
    busy: HashMap<(Kind, String), (String, Option<Value>)>,
}

/// The operations of one emulator.
pub(crate) struct Operations {
    latency: Duration,
    state: Mutex<State>,
}

impl Operations {
    /// Operations that take `latency` each.
    pub(crate) fn new(latency: Duration) -> Self {
        Operations {
            latency,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an operation on resource `name`; `view` is a deleted resource's last GET. Returns
    /// the operation's id, which the provider encodes as Azure's does (`id=os_ih_{guid};
    /// region={location}`, base64, URL-safe so it is one path segment).
    pub(crate) fn start(
        &self,
        kind: Kind,
        name: &str,
        action: Action,
        location: &str,
        view: Option<Value>,
    ) -> String {
        let source = match kind {
            Kind::Hub => "os_ih",
            Kind::Dps => "os_dps",
        };
        let id = base64::engine::general_purpose::URL_SAFE.encode(format!(
            "id={source}_{};region={location}",
            crate::emulator::cloud::random_guid()
        ));
        let now = Instant::now();
        let mut state = self.state();
        state
            .operations
            .retain(|_, op| op.done_at + KEPT_AFTER_DONE > now);
        if state.operations.len() >= MAX_OPERATIONS
            && let Some(oldest) = state
                .operations
                .iter()
                .min_by_key(|(_, op)| op.done_at)
                .map(|(id, _)| id.clone())
        {
            state.operations.remove(&oldest);
        }
        state.operations.insert(
            id.clone(),
            Operation {
                kind,
                name: name.to_string(),
                action,
                location: location.to_string(),
                done_at: now + self.latency,
            },
        );
        state
            .busy
            .insert((kind, name.to_ascii_lowercase()), (id.clone(), view));
        id
    }

    /// An operation by id.
    pub(crate) fn operation(&self, id: &str) -> Option<Operation> {
        self.state().operations.get(id).cloned()
    }

    /// What resource `name` is doing now; an operation past its latency has ended.
    pub(crate) fn phase(&self, kind: Kind, name: &str) -> Phase {
        let mut state = self.state();
        let key = (kind, name.to_ascii_lowercase());
        let Some((id, view)) = state.busy.get(&key).cloned() else {
            return Phase::Settled;
        };
        let Some(operation) = state.operations.get(&id).cloned() else {
            state.busy.remove(&key);
            return Phase::Settled;
        };
        if operation.remaining().is_zero() {
            state.busy.remove(&key);
            return Phase::Settled;
        }
        match (operation.action, view) {
            (Action::Delete, Some(view)) => Phase::Deleting { id, view },
            (action, _) => Phase::Busy { action, id },
        }
    }

    /// The last views of the resources of `kind` still being deleted (ARM lists them).
    pub(crate) fn deleting(&self, kind: Kind) -> Vec<Value> {
        let names: Vec<String> = self
            .state()
            .busy
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, name)| name.clone())
            .collect();
        names
            .iter()
            .filter_map(|name| match self.phase(kind, name) {
                Phase::Deleting { view, .. } => Some(view),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_ends_after_its_latency_and_a_deleted_view_goes_with_it() {
        let instant = Operations::new(Duration::ZERO);
        let id = instant.start(Kind::Hub, "Hub-A", Action::Create, "westeurope", None);
        assert_eq!(instant.phase(Kind::Hub, "hub-a"), Phase::Settled);
        let op = instant.operation(&id).unwrap();
        assert_eq!(
            (op.kind, op.action, op.name.as_str()),
            (Kind::Hub, Action::Create, "Hub-A")
        );
        assert!(op.remaining().is_zero());
        // The id is one URL path segment and says what Azure's say.
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(id.as_bytes())
            .unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        assert!(decoded.starts_with("id=os_ih_") && decoded.ends_with(";region=westeurope"));
        assert!(!id.contains('/') && !id.contains('+'));

        let slow = Operations::new(Duration::from_secs(3600));
        let view = serde_json::json!({"name": "d"});
        let id = slow.start(Kind::Dps, "d", Action::Delete, "eastus", Some(view.clone()));
        assert_eq!(
            slow.phase(Kind::Dps, "D"),
            Phase::Deleting {
                id: id.clone(),
                view: view.clone()
            }
        );
        assert_eq!(slow.deleting(Kind::Dps), vec![view]);
        assert!(slow.deleting(Kind::Hub).is_empty());
        assert!(slow.operation(&id).unwrap().remaining() > Duration::from_secs(3500));
        assert!(slow.operation("unknown").is_none());
    }
}
