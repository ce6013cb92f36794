//! One traced provisioning attempt: the device's credential as it holds it, sent to DPS once
//! through dpskit's own provisioning client, every step recorded (dial, TLS with both chains,
//! CONNECT, CONNACK, SUBSCRIBE, the register request, each answer, the polls, the outcome).
//! A refusal is explained by the checks already run: of their problems, those the error can
//! mean (`crate::diagnosis::errors::causes_for`); a TLS failure by the trust-bundle checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::clock::Clock;
use crate::diagnosis::credential::HeldCredential;
use crate::diagnosis::trust_bundle::TrustBundle;
use crate::diagnosis::{Cause, Check};
use crate::error::Error;
use crate::pki::chain::describe;
use crate::pki::{Certificate, Credential};
use crate::provisioning::{
    DeviceAuth, ProvisioningRequest, RegistrationHooks, TraceEvent, provision_observed,
};
use crate::transport::Trust;
use crate::transport::mqtt::DialError;

/// The longest body a trace step quotes.
const MAX_BODY_SHOWN: usize = 2048;

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
    /// How long the attempt may take, polls included; past it the attempt is reported as
    /// timed out, and the checks' findings are kept.
    pub timeout: Duration,
}

/// One step of the attempt as the device saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceStep {
    /// Milliseconds since the attempt started.
    pub at_ms: f64,
    /// `dial`, `tcp`, `tls`, `connect`, `connack`, `subscribe`, `register`, `status` (an
    /// answer), `poll`, then the outcome: `assigned`, `refused` or `failed` (or a failed
    /// `dial` or `tls`).
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

/// Records the steps as the provisioning client reports them.
struct Recorder {
    started: tokio::time::Instant,
    steps: Mutex<Vec<TraceStep>>,
    /// The last answer's status and body: a refusal's message is DPS's own, from here.
    last_answer: Mutex<Option<(u16, Vec<u8>)>>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            started: tokio::time::Instant::now(),
            steps: Mutex::new(Vec::new()),
            last_answer: Mutex::new(None),
        }
    }

    fn push(&self, step: &str, detail: String) {
        let at_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TraceStep {
                at_ms,
                step: step.to_string(),
                detail,
            });
    }

    fn steps(&self) -> Vec<TraceStep> {
        std::mem::take(&mut *self.steps.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn last_answer(&self) -> Option<(u16, Vec<u8>)> {
        self.last_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() > MAX_BODY_SHOWN {
        let cut = (0..=MAX_BODY_SHOWN)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}... ({} bytes)", &text[..cut], body.len())
    } else {
        text.into_owned()
    }
}

fn subjects(certificates: &[&Certificate]) -> String {
    if certificates.is_empty() {
        return "none".into();
    }
    certificates
        .iter()
        .map(|c| c.info().subject.clone())
        .collect::<Vec<_>>()
        .join(" | ")
}

impl RegistrationHooks for Recorder {
    fn trace(&self, step: TraceEvent<'_>) {
        match step {
            TraceEvent::Dial { host, port } => self.push("dial", format!("{host}:{port}")),
            TraceEvent::Connected => self.push("tcp", "connected".into()),
            TraceEvent::Tls {
                server_chain,
                client,
            } => {
                let client_chain: Vec<&Certificate> =
                    client.map(|c| c.sent_chain().collect()).unwrap_or_default();
                let server = match server_chain.first().map(|der| Certificate::from_der(der)) {
                    Some(Ok(c)) => format!(
                        "server certificate subject '{}', issuer '{}'",
                        c.info().subject,
                        c.info().issuer
                    ),
                    Some(Err(e)) => format!("server certificate unreadable: {e}"),
                    None => "no server certificate seen".into(),
                };
                self.push(
                    "tls",
                    format!("{server}; client chain sent: {}", subjects(&client_chain)),
                );
            }
            TraceEvent::Connect { username } => {
                self.push("connect", format!("username {username}"))
            }
            TraceEvent::ConnAck { code } => self.push("connack", format!("{code:?}")),
            TraceEvent::Subscribe { filter } => self.push("subscribe", filter.to_string()),
            TraceEvent::Register { topic, body } => {
                self.push("register", format!("{topic} {}", shown(body.as_bytes())))
            }
            TraceEvent::Poll { topic } => self.push("poll", topic.to_string()),
            TraceEvent::Answer {
                status,
                retry_after,
                body,
            } => {
                *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((status, body.to_vec()));
                self.push(
                    "status",
                    format!(
                        "{status}{} {}",
                        retry_after
                            .map(|s| format!(" retry-after {s}"))
                            .unwrap_or_default(),
                        shown(body)
                    ),
                );
            }
        }
    }
}

fn not_attempted(message: String) -> Attempt {
    Attempt {
        succeeded: false,
        status: None,
        error_code: None,
        message,
        assigned_hub: None,
        device_id: None,
        trace: Vec::new(),
        causes: Vec::new(),
    }
}

/// The problems among `checks` whose cause is one of `wanted`, in the order of `wanted`.
fn explained_by(checks: &[Check], wanted: &[Cause]) -> Vec<Cause> {
    let found = crate::diagnosis::causes(checks);
    wanted
        .iter()
        .filter(|c| found.contains(c))
        .copied()
        .collect()
}

/// A refusal's causes: the checks' problems the answer can mean, else what it can mean.
fn refusal_causes(checks: &[Check], status: Option<u16>, error_code: Option<u32>) -> Vec<Cause> {
    let likely = crate::diagnosis::errors::causes_for(status, error_code);
    let explained = explained_by(checks, &likely);
    if explained.is_empty() {
        likely
    } else {
        explained
    }
}

/// The dial failure inside `error`, if that is what it is.
fn dial_error(error: &Error) -> Option<&DialError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(dial) = e.downcast_ref::<DialError>() {
            return Some(dial);
        }
        source = e.source();
    }
    None
}

/// Whether a failed handshake is the device refusing the server's certificate.
fn server_refused(tls: &std::io::Error) -> bool {
    match tls
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => true,
        Some(_) => false,
        None => tls.to_string().contains("invalid peer certificate"),
    }
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
    let Some(leaf) = credential.certificates.first() else {
        return not_attempted("not attempted: no certificate held".into());
    };
    let Some(key) = &credential.key else {
        return not_attempted(
            "not attempted: no private key given, so the certificate cannot be presented".into(),
        );
    };
    let key = match key.try_clone() {
        Ok(key) => key,
        Err(e) => return not_attempted(format!("not attempted: the key is unusable: {e}")),
    };
    // Sent as held: the certificates in the device's order, not re-sorted.
    let sendable = match Credential::new(leaf.clone(), key, credential.certificates[1..].to_vec()) {
        Ok(c) => c,
        Err(_) => {
            return not_attempted(format!(
                "not attempted: the private key is not {}'s, the first certificate held, so \
                 the TLS handshake would fail as held",
                describe(leaf)
            ));
        }
    };
    let Some(registration_id) = registration_id
        .map(str::to_string)
        .or_else(|| leaf.info().common_name.clone())
    else {
        return not_attempted(
            "not attempted: no registration id given and the certificate has no CN".into(),
        );
    };
    let trust = match bundle {
        Some(bundle) => {
            let pem: String = bundle.certificates.iter().map(Certificate::pem).collect();
            match Trust::from_pem(pem.as_bytes()) {
                Ok(trust) => trust,
                Err(e) => {
                    return not_attempted(format!(
                        "not attempted: the trust bundle {} is unusable: {e}",
                        bundle.source
                    ));
                }
            }
        }
        None => target.trust.clone(),
    };
    let request = ProvisioningRequest {
        host: target.host.clone(),
        port: target.port,
        via: Default::default(),
        id_scope: target.id_scope.clone(),
        registration_id: registration_id.clone(),
        auth: DeviceAuth::X509(Arc::new(sendable)),
        payload: None,
        timeout: target.timeout,
        csr: None,
        clock: clock.clone(),
    };
    let recorder = Recorder::new();
    let outcome = provision_observed(&request, &trust, &recorder).await;
    let mut attempt = not_attempted(String::new());
    match outcome {
        Ok(result) => {
            let hub = result.assigned_hub.clone().unwrap_or_default();
            let device = result.device_id.clone().unwrap_or_default();
            recorder.push("assigned", format!("{hub} as '{device}'"));
            attempt.succeeded = true;
            attempt.status = recorder.last_answer().map(|(s, _)| s);
            attempt.message = format!("assigned to {hub} as '{device}'");
            attempt.assigned_hub = result.assigned_hub;
            attempt.device_id = result.device_id;
        }
        Err(Error::RegistrationFailed {
            status,
            error_code,
            message,
        }) => {
            let answer = recorder.last_answer();
            let dps_message = answer.as_ref().and_then(|(_, body)| {
                let body: serde_json::Value = serde_json::from_slice(body).ok()?;
                let details = crate::protocol::dps::ErrorDetails::from_value(&body);
                details.message.or(details.error_message).or_else(|| {
                    let state = &body["registrationState"];
                    let details = crate::protocol::dps::ErrorDetails::from_value(state);
                    details.error_message.or(details.message)
                })
            });
            let status = status
                .parse::<u16>()
                .ok()
                .or(answer.as_ref().map(|(s, _)| *s));
            recorder.push(
                "refused",
                format!(
                    "{}{}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    error_code.map(|c| format!(" ({c})")).unwrap_or_default()
                ),
            );
            attempt.status = status;
            attempt.error_code = error_code;
            attempt.message = dps_message.unwrap_or(message);
            attempt.causes = refusal_causes(checks, status, error_code);
        }
        Err(Error::Service(failure)) => {
            // A refused CONNECT: the CONNACK's code counts as the status.
            recorder.push("refused", failure.to_string());
            attempt.status = Some(failure.status);
            attempt.error_code = failure.error_code;
            attempt.causes = refusal_causes(checks, Some(failure.status), failure.error_code);
            attempt.message = failure.message;
        }
        Err(error) => {
            let message = error.to_string();
            match dial_error(&error) {
                Some(DialError::Tls(tls)) if server_refused(tls) => {
                    recorder.push("tls", format!("failed: {tls}"));
                    let wanted = [Cause::StaleTrustBundle, Cause::UntrustedServer];
                    let explained = explained_by(checks, &wanted);
                    attempt.causes = if explained.is_empty() {
                        vec![Cause::UntrustedServer]
                    } else {
                        explained
                    };
                }
                Some(DialError::Tls(tls)) => {
                    // The server refusing the client's certificate ends the handshake too.
                    recorder.push("tls", format!("failed: {tls}"));
                }
                Some(DialError::Unreachable(e)) => {
                    recorder.push("dial", format!("failed: {e}"));
                    attempt.causes = vec![Cause::Unreachable];
                }
                _ => recorder.push("failed", message.clone()),
            }
            attempt.message = message;
        }
    }
    attempt.trace = recorder.steps();
    attempt
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal is explained by the checks' problems the error can mean, never by a warning
    /// or by a problem the error cannot mean.
    #[test]
    fn a_refusal_is_explained_by_the_problems_the_error_can_mean() {
        let checks = [
            Check::problem("a", "A", Cause::DisabledEnrollment, "disabled", "enable it"),
            Check::problem("b", "B", Cause::ExpiredLeaf, "expired", "renew it"),
            Check::warning("c", "C", Some(Cause::UnverifiedCa), "maybe", "verify it"),
        ];
        assert_eq!(
            explained_by(
                &checks,
                &[
                    Cause::UnverifiedCa,
                    Cause::DisabledEnrollment,
                    Cause::NoLinkedHub
                ]
            ),
            [Cause::DisabledEnrollment]
        );
        assert!(explained_by(&checks, &[Cause::UnverifiedCa]).is_empty());
        // Unexplained by the checks, the error's own likely causes stand.
        assert_eq!(
            refusal_causes(&[], Some(401), Some(401_002)),
            crate::diagnosis::errors::causes_for(Some(401), Some(401_002))
        );
    }
}
