//! `dpskit doctor`: why a device cannot provision, and what to change. It runs the offline
//! checks of `crate::diagnosis` on the credential as the device holds it, then (given a DPS)
//! the online checks through the same management clients dpskit uses everywhere (`online`),
//! then (when asked) one traced provisioning attempt (`attempt`), and gathers everything into
//! one `Report`, failing checks first. Device side: it uses the service and provisioning
//! clients and never the emulator, so a local cloud and Azure are diagnosed alike.

pub mod attempt;
pub mod online;

use serde::Serialize;

use crate::clock::Clock;
use crate::diagnosis::credential::Loaded;
use crate::diagnosis::offline::{self, OfflineOptions};
use crate::diagnosis::trust_bundle::{self, ServerRoots, TrustBundle};
use crate::diagnosis::{self, Cause, Check};

pub use attempt::{Attempt, ConnectTarget, TraceStep};
pub use online::OnlineTarget;

/// Days before expiry from which a certificate is reported as expiring soon.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Everything the doctor is told about one device.
pub struct Request {
    /// The credential as loaded (what could not be read is its `files.parse` problem).
    pub credential: Loaded,
    /// The registration id the device uses; the leaf's CN when `None`.
    pub registration_id: Option<String>,
    /// The trust bundle the device checks servers against, loaded (or why it could not be).
    pub trust_bundle: Option<Result<TrustBundle, Check>>,
    /// Which servers the device talks to: Azure's, or the local cloud's.
    pub servers: ServerRoots,
    /// The DPS to run the online checks against.
    pub online: Option<OnlineTarget>,
    /// Where to make one traced provisioning attempt.
    pub connect: Option<ConnectTarget>,
    /// The clock the checks judge validity with (the local cloud's own, which may have been
    /// moved forward, or the system's).
    pub clock: Clock,
}

/// The doctor's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The registration id checked (given, or the leaf's CN).
    pub registration_id: Option<String>,
    /// Every check, problems first, then warnings, then the rest.
    pub checks: Vec<Check>,
    /// The traced attempt, when one was made.
    pub attempt: Option<Attempt>,
}

impl Report {
    /// The distinct causes of the problems the checks found. An attempt's refusal is
    /// explained by these; when none explains it, the attempt lists the error's likely causes
    /// itself (`Attempt::causes`), which are guesses and not counted here.
    pub fn causes(&self) -> Vec<Cause> {
        diagnosis::causes(&self.checks)
    }

    /// No problem found and no failed attempt.
    pub fn is_healthy(&self) -> bool {
        self.causes().is_empty() && self.attempt.as_ref().is_none_or(|a| a.succeeded)
    }
}

/// Runs every check `request` allows and reports, failing checks first.
pub async fn diagnose(request: Request) -> Report {
    let now = request.clock.now();
    let registration_id = request.registration_id.clone().or_else(|| {
        request
            .credential
            .credential
            .as_ref()
            .and_then(offline::leaf)
            .and_then(|leaf| leaf.info().common_name.clone())
    });
    let mut checks = vec![request.credential.check.clone()];
    if let Some(held) = &request.credential.credential {
        checks.extend(offline::check(
            held,
            &OfflineOptions {
                registration_id: request.registration_id.as_deref(),
                now,
                expiry_warning_days: EXPIRY_WARNING_DAYS,
            },
        ));
    }
    let bundle = match &request.trust_bundle {
        Some(Ok(bundle)) => Some(bundle),
        Some(Err(unreadable)) => {
            checks.push(unreadable.clone());
            None
        }
        None => None,
    };
    if !matches!(request.trust_bundle, Some(Err(_))) {
        checks.push(trust_bundle::check(bundle, &request.servers, now));
    }
    if let (Some(target), Some(held), Some(id)) = (
        &request.online,
        &request.credential.credential,
        registration_id.as_deref(),
    ) {
        checks.extend(online::check(target, held, id, now).await);
    }
    let attempt = match (&request.connect, &request.credential.credential) {
        (Some(target), Some(held)) => Some(
            attempt::run(
                target,
                held,
                registration_id.as_deref(),
                bundle,
                &checks,
                &request.clock,
            )
            .await,
        ),
        _ => None,
    };
    diagnosis::failing_first(&mut checks);
    Report {
        registration_id,
        checks,
        attempt,
    }
}
