//! One traced provisioning attempt (helper B fills this in; see the brief).

use serde::Serialize;

use crate::clock::Clock;
use crate::diagnosis::credential::HeldCredential;
use crate::diagnosis::trust_bundle::TrustBundle;
use crate::diagnosis::{Cause, Check};
use crate::transport::Trust;

/// Where to attempt provisioning.
#[derive(Clone)]
pub struct ConnectTarget {
    /// DPS's device host.
    pub host: String,
    /// Its MQTT port.
    pub port: u16,
    /// The ID scope.
    pub id_scope: String,
    /// What DPS's certificate is checked against when the device's own bundle is not given.
    pub trust: Trust,
}

/// One step of the attempt as the device saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceStep {
    /// Milliseconds since the attempt started.
    pub at_ms: f64,
    /// `dial`, `tls`, `connect`, `subscribe`, `register`, `status`, `poll`, ...
    pub step: String,
    /// What was sent or received (never a secret).
    pub detail: String,
}

/// How the attempt went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attempt {
    /// DPS assigned the device.
    pub succeeded: bool,
    /// The status DPS answered (or the CONNACK's), when it answered.
    pub status: Option<u16>,
    /// Azure's error code, when one came.
    pub error_code: Option<u32>,
    /// What happened, in one line.
    pub message: String,
    /// The hub assigned.
    pub assigned_hub: Option<String>,
    /// The device id in it.
    pub device_id: Option<String>,
    /// Every step, in order.
    pub trace: Vec<TraceStep>,
    /// On a refusal, its causes: those of the checks' problems that the error code can mean,
    /// else the error's likely causes.
    pub causes: Vec<Cause>,
}

/// Provisions once, tracing every step.
pub async fn run(
    target: &ConnectTarget,
    credential: &HeldCredential,
    registration_id: Option<&str>,
    bundle: Option<&TrustBundle>,
    checks: &[Check],
    clock: &Clock,
) -> Attempt {
    let _ = (target, credential, registration_id, bundle, checks, clock);
    Attempt {
        succeeded: false,
        status: None,
        error_code: None,
        message: String::new(),
        assigned_hub: None,
        device_id: None,
        trace: Vec::new(),
        causes: Vec::new(),
    }
}
