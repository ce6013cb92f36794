//! IoT Hub's certificate renewal over MQTT (Azure's certificate management preview): a device
//! whose certificate DPS issued asks its hub for a new one on
//! `$iothub/credentials/POST/issueCertificate/?$rid=..` with a CSR; the hub checks the body
//! (`protocol::credentials`, refusals at once, no 202), keeps one operation per device (409005
//! while one is pending, `replace` cancels it, 412001 when `replace` names none), answers 202,
//! then, after the hub's `certificate_issuance_delay_ms` knob, 200 with the chain issued by the
//! policy that issued the device's certificate (or 400040 when the CSR fails verification).
//!
//! Answers reach a device only while it is subscribed to `$iothub/credentials/res/#`: until
//! then they wait in its session (a persistent session keeps them across reconnects; a clean
//! session drops those already waiting). Pending operations and waiting answers live in memory:
//! a restart of the emulator forgets them, as it ends every connection; the device's request
//! times out on its side and it asks again.
//!
//! Locks: `devices` guards one map, is held only to read or change it, and never while the
//! cloud, the store or a session is called (see the hub module's rule).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{DeviceKey, HubEngine, Outbound, key, lock};
use crate::emulator::cloud::random_guid;
use crate::emulator::model::{DeviceAuth, IssuedBy};
use crate::pki::CertificateRequest;
use crate::protocol::credentials::{
    self, Accepted, ErrorBody, ErrorInfo, IssueCertificateRequest, Issued, codes, messages,
};

/// Answers waiting for one device's subscription at most; past it the oldest go (a device
/// that never subscribes must not grow the hub's memory).
const MAX_WAITING: usize = 16;

/// The renewal state of every device of every hub.
#[derive(Default)]
pub(super) struct Renewals {
    devices: std::sync::Mutex<HashMap<DeviceKey, DeviceRenewals>>,
    /// Tells operations apart: a completion finds its own operation still pending, or was
    /// cancelled by a `replace`.
    next_operation: AtomicU64,
}

#[derive(Default)]
struct DeviceRenewals {
    pending: Option<Pending>,
    /// Answers (topic, body) not delivered yet, oldest first.
    waiting: VecDeque<(String, Vec<u8>)>,
}

/// An accepted request not answered yet.
struct Pending {
    rid: String,
    correlation_id: String,
    /// When the hub discards it, on the cloud's clock (Unix milliseconds).
    expires_ms: i64,
    operation: u64,
}

/// A refusal: status, code, message and what `info` says.
#[derive(Debug)]
struct Refusal {
    code: u32,
    message: String,
    /// Boxed: most refusals have none, and results carrying a refusal stay small.
    info: Option<Box<ErrorInfo>>,
}

impl Refusal {
    fn new(code: u32, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            info: None,
        }
    }

    fn status(&self) -> u16 {
        crate::protocol::credentials::status_of(self.code)
    }
}

/// Unix milliseconds as IoT Hub writes the times of this API (nanosecond digits, `Z`).
fn azure_time_nanos(unix_ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond()
    )
}

impl Renewals {
    /// Starts an operation for request `rid` at `now_ms`, cancelling the pending one when
    /// `replace` names it (or is `*`): the new operation's id and correlation id and expiry,
    /// or the refusal (409005 while another is pending, 412001 when `replace` names none).
    fn begin(
        &self,
        device: &DeviceKey,
        rid: &str,
        replace: Option<&str>,
        now_ms: i64,
    ) -> Result<(u64, Accepted), Refusal> {
        let mut devices = lock(&self.devices);
        let state = devices.entry(device.clone()).or_default();
        if state
            .pending
            .as_ref()
            .is_some_and(|p| p.expires_ms <= now_ms)
        {
            state.pending = None;
        }
        match (&state.pending, replace) {
            (Some(pending), None) => {
                return Err(Refusal {
                    info: Some(Box::new(ErrorInfo {
                        request_id: Some(pending.rid.clone()),
                        operation_expires: Some(azure_time_nanos(pending.expires_ms)),
                        correlation_id: Some(pending.correlation_id.clone()),
                        ..ErrorInfo::default()
                    })),
                    ..Refusal::new(codes::OPERATION_ACTIVE, messages::OPERATION_ACTIVE)
                });
            }
            (Some(pending), Some(named))
                if named == credentials::REPLACE_ANY || named == pending.rid => {}
            (None, Some(named)) if named == credentials::REPLACE_ANY => {}
            (_, Some(named)) => {
                return Err(Refusal {
                    info: Some(Box::new(ErrorInfo {
                        request_id: Some(named.to_string()),
                        ..ErrorInfo::default()
                    })),
                    ..Refusal::new(codes::NOTHING_TO_REPLACE, messages::NOTHING_TO_REPLACE)
                });
            }
            (None, None) => {}
        }
        let operation = self.next_operation.fetch_add(1, Ordering::Relaxed);
        let expires_ms = now_ms + credentials::OPERATION_LIFETIME_SECONDS * 1000;
        let accepted = Accepted {
            correlation_id: random_guid(),
            operation_expires: azure_time_nanos(expires_ms),
        };
        state.pending = Some(Pending {
            rid: rid.to_string(),
            correlation_id: accepted.correlation_id.clone(),
            expires_ms,
            operation,
        });
        Ok((operation, accepted))
    }

    /// Ends `operation` if it is still the device's pending one and has not expired at
    /// `now_ms`; false when it was replaced or expired (then nothing is answered).
    fn finish(&self, device: &DeviceKey, operation: u64, now_ms: i64) -> bool {
        let mut devices = lock(&self.devices);
        let Some(state) = devices.get_mut(device) else {
            return false;
        };
        match &state.pending {
            Some(p) if p.operation == operation => {
                let live = p.expires_ms > now_ms;
                state.pending = None;
                live
            }
            _ => false,
        }
    }

    fn queue(&self, device: &DeviceKey, topic: String, body: Vec<u8>) {
        let mut devices = lock(&self.devices);
        let waiting = &mut devices.entry(device.clone()).or_default().waiting;
        if waiting.len() >= MAX_WAITING {
            waiting.pop_front();
        }
        waiting.push_back((topic, body));
    }

    fn take_waiting(&self, device: &DeviceKey) -> VecDeque<(String, Vec<u8>)> {
        lock(&self.devices)
            .get_mut(device)
            .map(|state| std::mem::take(&mut state.waiting))
            .unwrap_or_default()
    }

    /// Puts answers that could not be sent back in front of any queued since.
    fn requeue(&self, device: &DeviceKey, mut unsent: VecDeque<(String, Vec<u8>)>) {
        let mut devices = lock(&self.devices);
        let waiting = &mut devices.entry(device.clone()).or_default().waiting;
        unsent.extend(waiting.drain(..));
        while unsent.len() > MAX_WAITING {
            unsent.pop_front();
        }
        *waiting = unsent;
    }

    /// A clean session: the answers waiting are dropped (a pending operation stays; its answer
    /// waits for the new session's subscription).
    pub(super) fn clean_session(&self, device: &DeviceKey) {
        if let Some(state) = lock(&self.devices).get_mut(device) {
            state.waiting.clear();
        }
    }

    /// The device was deleted: its operation and answers go with it.
    pub(super) fn forget(&self, device: &DeviceKey) {
        lock(&self.devices).remove(device);
    }
}

impl HubEngine {
    /// Handles a renewal request `rid` of `device_id` (already acknowledged): a malformed body,
    /// a device not issued its certificate by DPS, a conflict with the pending operation are
    /// refused at once; otherwise 202 now and the outcome after the hub's issuance delay.
    pub(crate) fn request_certificate(
        self: &Arc<Self>,
        hub: &str,
        device_id: &str,
        rid: &str,
        body: &[u8],
    ) {
        let device = key(hub, device_id);
        let request = match IssueCertificateRequest::parse(body, device_id) {
            Ok(request) => request,
            Err(refused) => {
                return self.refuse(
                    hub,
                    device_id,
                    rid,
                    Refusal::new(refused.code, refused.message),
                );
            }
        };
        let issued_by = match self.cloud.hub_device(hub, device_id) {
            Some(identity) if matches!(identity.auth, DeviceAuth::CertificateAuthority) => {
                identity.issued_by
            }
            _ => None,
        };
        let Some(issued_by) = issued_by else {
            let refusal = Refusal::new(codes::NOT_ALLOWED, messages::NOT_ALLOWED);
            return self.refuse(hub, device_id, rid, refusal);
        };
        let now_ms = self.cloud.clock().now_ms();
        let (operation, accepted) =
            match self
                .renewals
                .begin(&device, rid, request.replace.as_deref(), now_ms)
            {
                Ok(begun) => begun,
                Err(refusal) => return self.refuse(hub, device_id, rid, refusal),
            };
        let correlation_id = accepted.correlation_id.clone();
        self.answer(hub, device_id, 202, rid, &accepted);
        let delay = Duration::from_millis(self.knobs(hub).certificate_issuance_delay_ms);
        let (engine, hub, device_id, rid) = (
            self.clone(),
            hub.to_string(),
            device_id.to_string(),
            rid.to_string(),
        );
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let now = engine.cloud.clock().now_ms();
            if !engine
                .renewals
                .finish(&key(&hub, &device_id), operation, now)
            {
                return;
            }
            match engine.issue_renewal(&device_id, &request.csr, &issued_by, now / 1000) {
                Ok(certificates) => {
                    let issued = Issued {
                        correlation_id,
                        certificates,
                    };
                    engine.answer(&hub, &device_id, 200, &rid, &issued);
                }
                Err(mut refusal) => {
                    let info = refusal.info.get_or_insert_with(Box::default);
                    info.correlation_id = Some(correlation_id);
                    engine.refuse(&hub, &device_id, &rid, refusal);
                }
            }
        });
    }

    /// Verifies a renewal's CSR (PKCS#10 with a good signature, CN = the device id, a key type
    /// the hub takes) and issues its certificate through the device's policy at `now`: the
    /// chain as base64 DER, leaf first, or the 400040 naming what failed.
    fn issue_renewal(
        &self,
        device_id: &str,
        csr: &str,
        issued_by: &IssuedBy,
        now: i64,
    ) -> Result<Vec<String>, Refusal> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD as BASE64;
        let rejected = |error: &str, why: String| Refusal {
            info: Some(Box::new(ErrorInfo {
                credential_error: Some(error.to_string()),
                credential_message: Some(why),
                ..ErrorInfo::default()
            })),
            ..Refusal::new(codes::CSR_REJECTED, messages::CSR_REJECTED)
        };
        let request = CertificateRequest::from_base64(csr).map_err(|e| {
            rejected(
                "CsrVerificationFailed",
                format!("CSR did not pass verification: {e}"),
            )
        })?;
        let cn = request.common_name().unwrap_or_default();
        if cn != device_id {
            return Err(rejected(
                "CommonNameMismatch",
                format!("The CSR's common name '{cn}' is not the device id '{device_id}'."),
            ));
        }
        if !crate::limits::csr_key_accepted(request.algorithm(), false) {
            return Err(rejected(
                "KeyTypeNotSupported",
                format!(
                    "The CSR's key type ({}) is not supported.",
                    request
                        .algorithm()
                        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
                ),
            ));
        }
        let policy = self
            .cloud
            .issuing_policy_by_name(&issued_by.namespace, &issued_by.policy)
            .map_err(|e| Refusal::new(codes::NOT_ALLOWED, e.to_string()))?;
        let chain = policy
            .issue(&request, device_id, now)
            .map_err(|e| rejected("IssuanceFailed", e.to_string()))?;
        Ok(chain.iter().map(|c| BASE64.encode(c.der())).collect())
    }

    fn refuse(&self, hub: &str, device_id: &str, rid: &str, refusal: Refusal) {
        let body = ErrorBody {
            error_code: refusal.code,
            message: refusal.message.clone(),
            tracking_id: random_guid(),
            timestamp_utc: azure_time_nanos(self.cloud.clock().now_ms()),
            info: refusal.info.as_deref().cloned(),
            retry_after: None,
        };
        self.answer(hub, device_id, refusal.status(), rid, &body);
    }

    /// Queues an answer for the device and delivers what waits if it is subscribed.
    fn answer(
        &self,
        hub: &str,
        device_id: &str,
        status: u16,
        rid: &str,
        body: &impl serde::Serialize,
    ) {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.renewals.queue(
            &key(hub, device_id),
            credentials::response_topic(status, rid),
            body,
        );
        self.deliver_renewal_answers(hub, device_id);
    }

    /// Sends the answers waiting for a device, if it is connected and subscribed to them.
    pub(super) fn deliver_renewal_answers(&self, hub: &str, device_id: &str) {
        if !self.subscriptions(hub, device_id).credentials {
            return;
        }
        let device = key(hub, device_id);
        let mut waiting = self.renewals.take_waiting(&device);
        while let Some((topic, payload)) = waiting.pop_front() {
            let message = Outbound::Publish {
                topic: topic.clone(),
                payload: payload.clone(),
                c2d: None,
            };
            if !self.send_to(hub, device_id, message) {
                waiting.push_front((topic, payload));
                self.renewals.requeue(&device, waiting);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceKey {
        key("hub", "dev")
    }

    #[test]
    fn one_operation_per_device_and_replace_cancels_it() {
        let renewals = Renewals::default();
        let (first, accepted) = renewals.begin(&device(), "r-001", None, 0).unwrap();
        assert_eq!(accepted.operation_expires, "1970-01-01T12:00:00.000000000Z");
        let busy = renewals.begin(&device(), "r-002", None, 1).err().unwrap();
        assert_eq!(busy.code, codes::OPERATION_ACTIVE);
        let info = busy.info.unwrap();
        assert_eq!(info.request_id.as_deref(), Some("r-001"));
        assert_eq!(info.correlation_id, Some(accepted.correlation_id));
        let unknown = renewals
            .begin(&device(), "r-003", Some("r-999"), 1)
            .err()
            .unwrap();
        assert_eq!(unknown.code, codes::NOTHING_TO_REPLACE);
        assert_eq!(unknown.info.unwrap().request_id.as_deref(), Some("r-999"));
        let (second, _) = renewals
            .begin(&device(), "r-004", Some("r-001"), 2)
            .unwrap();
        assert!(
            !renewals.finish(&device(), first, 3),
            "the replaced one is gone"
        );
        let (third, _) = renewals.begin(&device(), "r-005", Some("*"), 3).unwrap();
        assert!(!renewals.finish(&device(), second, 4));
        assert!(renewals.finish(&device(), third, 4));
        assert!(!renewals.finish(&device(), third, 4), "finished once");
        let nothing = renewals
            .begin(&device(), "r-006", Some("r-005"), 5)
            .err()
            .unwrap();
        assert_eq!(nothing.code, codes::NOTHING_TO_REPLACE);
        assert!(renewals.begin(&device(), "r-007", Some("*"), 5).is_ok());
    }

    #[test]
    fn an_expired_operation_neither_blocks_nor_completes() {
        let renewals = Renewals::default();
        let lifetime = credentials::OPERATION_LIFETIME_SECONDS * 1000;
        let (first, _) = renewals.begin(&device(), "r-001", None, 0).unwrap();
        assert!(!renewals.finish(&device(), first, lifetime));
        let (_, _) = renewals.begin(&device(), "r-002", None, 0).unwrap();
        assert!(renewals.begin(&device(), "r-003", None, lifetime).is_ok());
    }

    #[test]
    fn waiting_answers_are_bounded_and_a_clean_session_drops_them() {
        let renewals = Renewals::default();
        for n in 0..MAX_WAITING + 3 {
            renewals.queue(&device(), format!("t{n}"), Vec::new());
        }
        let waiting = renewals.take_waiting(&device());
        assert_eq!(waiting.len(), MAX_WAITING);
        assert_eq!(waiting.front().unwrap().0, "t3", "the oldest go first");
        renewals.queue(&device(), "later".into(), Vec::new());
        renewals.requeue(&device(), waiting);
        let again = renewals.take_waiting(&device());
        assert_eq!(again.back().unwrap().0, "later");
        assert_eq!(again.len(), MAX_WAITING);
        renewals.queue(&device(), "x".into(), Vec::new());
        renewals.clean_session(&device());
        assert!(renewals.take_waiting(&device()).is_empty());
    }
}
