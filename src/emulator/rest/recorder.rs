//! Records the HTTPS requests the emulator served (ARM, the DPS and the hub service APIs):
//! method, path, query, the headers that shape a request's meaning and its body, so that a
//! client's requests can be compared with the official SDKs' (the request-parity tests) or
//! read while debugging an Azure path.
//!
//! Only requests that passed authentication are recorded, after their body arrived. Secrets are
//! never kept: the `Authorization` header and every header outside a short allowlist are left
//! out; key fields of bodies (`primaryKey`, `secondaryKey`, ...), `SharedAccessKey=` in
//! connection strings and `sig=`/`code=` in URLs and queries are replaced by [`REDACTED`].
//! Bounded: the last [`DEFAULT_CAPACITY`] requests at most, bodies past
//! [`MAX_RECORDED_BODY`] bytes by their size only; and nothing at all (one atomic load per
//! request) while no recording is active.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::Value;

/// What replaces a secret in a recorded request.
pub(crate) const REDACTED: &str = "<redacted>";
/// Requests kept by default; older ones are dropped (and counted).
pub(crate) const DEFAULT_CAPACITY: usize = 1_000;
/// Largest body recorded; a longer one is recorded by its size only.
pub(crate) const MAX_RECORDED_BODY: usize = 64 * 1024;

/// The request headers recorded (lower case): those that change what a request means. Any
/// other header (`Authorization` above all) is never recorded.
const RECORDED_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "if-match",
    "if-none-match",
    "x-ms-continuation",
    "x-ms-max-item-count",
];

/// Body fields (compared case-insensitively) whose values are key material.
const SECRET_FIELDS: &[&str] = &[
    "primaryKey",
    "secondaryKey",
    "sharedAccessKey",
    "primaryConnectionString",
    "secondaryConnectionString",
];

/// `name=value` pairs whose value is a secret wherever they appear in text: connection
/// strings, SAS tokens, Azure Functions keys in a custom allocation webhook URL.
const SECRET_PAIRS: &[&str] = &["sharedaccesskey", "sig", "code"];

/// A recorded body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum RecordedBody {
    /// No body.
    Empty,
    /// A JSON body, parsed (secrets redacted).
    Json(Value),
    /// A body that is not JSON, as text (lossy UTF-8, secrets redacted).
    Text(String),
    /// A body longer than [`MAX_RECORDED_BODY`]: only its size is kept.
    Omitted,
}

/// One request as the emulator received it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    /// Position in the emulator's sequence of recorded requests (from 0).
    pub sequence: u64,
    /// Unix time with fractions, when the answer was ready.
    pub at: f64,
    /// `arm`, `dps` (the DPS service API) or `hub` (the hub service API).
    pub api: &'static str,
    /// HTTP method.
    pub method: String,
    /// The path as sent (percent-encoding kept), without the query.
    pub path: String,
    /// The query's `(name, value)` pairs in order, percent-decoded, secrets redacted.
    pub query: Vec<(String, String)>,
    /// The recorded headers (names lower case), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: RecordedBody,
    /// The body's length in bytes.
    pub body_size: usize,
    /// The status the emulator answered.
    pub status: u16,
}

/// What a recording holds: the requests since it started and how many of them were lost to
/// the bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequests {
    /// The requests still held, oldest first.
    pub requests: Vec<RecordedRequest>,
    /// Requests recorded since the start but already dropped to make room.
    pub dropped: u64,
    /// The sequence number the next request will get.
    pub next: u64,
}

/// The emulator's request recorder: a ring of the last requests, filled while at least one
/// recording is active.
pub struct RequestRecorder {
    /// Active recordings; at 0 nothing is recorded.
    active: AtomicUsize,
    ring: Mutex<Ring>,
}

struct Ring {
    capacity: usize,
    /// The sequence number of the next request.
    next: u64,
    items: VecDeque<RecordedRequest>,
}

impl Default for RequestRecorder {
    fn default() -> Self {
        RequestRecorder::new(DEFAULT_CAPACITY)
    }
}

impl RequestRecorder {
    /// A recorder keeping at most `capacity` requests (at least one).
    pub fn new(capacity: usize) -> Self {
        RequestRecorder {
            active: AtomicUsize::new(0),
            ring: Mutex::new(Ring {
                capacity: capacity.max(1),
                next: 0,
                items: VecDeque::new(),
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a recording; returns the sequence number of its first request (pass it to
    /// [`since`](Self::since)). Recordings may overlap: each reads from its own start.
    pub fn start(&self) -> u64 {
        let ring = self.ring();
        self.active.fetch_add(1, Ordering::SeqCst);
        ring.next
    }

    /// Ends a recording. When the last one ends, the kept requests are forgotten.
    pub fn stop(&self) {
        let mut ring = self.ring();
        let before = self
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before <= 1 {
            ring.items.clear();
        }
    }

    /// Whether a recording is active.
    pub fn is_recording(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// The requests numbered `start` and after.
    pub fn since(&self, start: u64) -> RecordedRequests {
        let ring = self.ring();
        let oldest = ring.items.front().map_or(ring.next, |r| r.sequence);
        RecordedRequests {
            requests: ring
                .items
                .iter()
                .filter(|r| r.sequence >= start)
                .cloned()
                .collect(),
            dropped: oldest.saturating_sub(start),
            next: ring.next,
        }
    }

    /// Records one authenticated request and the status it was answered with (no-op while no
    /// recording is active).
    pub(crate) fn record(
        &self,
        parts: &hyper::http::request::Parts,
        body: &[u8],
        api: &'static str,
        status: u16,
    ) {
        if !self.is_recording() {
            return;
        }
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| RECORDED_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    redact_text(&String::from_utf8_lossy(value.as_bytes())),
                )
            })
            .collect();
        let query = crate::protocol::query_pairs(parts.uri.query().unwrap_or(""))
            .map(|(name, value)| {
                let decode = |s: &str| crate::sas::url_decode(s).unwrap_or_else(|_| s.to_string());
                let name = decode(name);
                let value = if is_secret_pair(&name) {
                    REDACTED.to_string()
                } else {
                    redact_text(&decode(value))
                };
                (name, value)
            })
            .collect();
        let request = RecordedRequest {
            sequence: 0,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            api,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query,
            headers,
            body: recorded_body(body),
            body_size: body.len(),
            status,
        };
        let mut ring = self.ring();
        // A recording that ended while this request was served leaves nothing behind.
        if !self.is_recording() {
            return;
        }
        let sequence = ring.next;
        ring.next += 1;
        if ring.items.len() >= ring.capacity {
            ring.items.pop_front();
        }
        ring.items.push_back(RecordedRequest {
            sequence,
            ..request
        });
    }
}

fn recorded_body(body: &[u8]) -> RecordedBody {
    if body.is_empty() {
        return RecordedBody::Empty;
    }
    if body.len() > MAX_RECORDED_BODY {
        return RecordedBody::Omitted;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => RecordedBody::Json(redact_json(value)),
        Err(_) => RecordedBody::Text(redact_text(&String::from_utf8_lossy(body))),
    }
}

fn is_secret_pair(name: &str) -> bool {
    SECRET_PAIRS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `value` with key fields replaced and secret pairs in its strings masked, at every depth.
fn redact_json(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let secret =
                        SECRET_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(&k)) && !v.is_null();
                    let v = if secret {
                        Value::String(REDACTED.into())
                    } else {
                        redact_json(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_json).collect()),
        Value::String(text) => Value::String(redact_text(&text)),
        other => other,
    }
}

/// `text` with the value of every secret `name=value` pair masked: a pair starts the text or
/// follows a separator (`;`, `&`, `?`, white space, quotes), and its value runs to the next
/// separator.
fn redact_text(text: &str) -> String {
    let is_separator =
        |c: char| matches!(c, ';' | '&' | '?' | '"' | '\'' | ',') || c.is_whitespace();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut at_boundary = true;
    while !rest.is_empty() {
        // The name runs to the first `=` or separator: each is scanned once, so long texts
        // cost linear time.
        let name_end = at_boundary
            .then(|| rest.find(|c: char| c == '=' || is_separator(c)))
            .flatten();
        if let Some(name_end) = name_end
            && rest[name_end..].starts_with('=')
            && is_secret_pair(&rest[..name_end])
        {
            let name = &rest[..name_end];
            let value_start = name.len() + 1;
            let value_end = rest[value_start..]
                .find(is_separator)
                .map_or(rest.len(), |i| value_start + i);
            out.push_str(&rest[..value_start]);
            out.push_str(REDACTED);
            rest = &rest[value_end..];
            at_boundary = false;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
        at_boundary = is_separator(c);
    }
    out
}

#[cfg(test)]
mod tests {
    //! The recorder on its own: what it keeps, what it never keeps, and its bound. (Recording
    //! over real HTTPS is tried in `rest/tests.rs`.)

    use super::*;
    use serde_json::json;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Parts {
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn secrets_in_text_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_text(
                "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=abc+/="
            ),
            "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=<redacted>"
        );
        assert_eq!(
            redact_text("SharedAccessSignature sr=h&sig=a%2Bb&se=1&skn=p"),
            "SharedAccessSignature sr=h&sig=<redacted>&se=1&skn=p"
        );
        assert_eq!(
            redact_text("https://f.azurewebsites.net/api/alloc?code=k3y&clientId=default"),
            "https://f.azurewebsites.net/api/alloc?code=<redacted>&clientId=default"
        );
        // Only whole names: `errorcode=` and `design=` are not secrets.
        for kept in ["errorcode=1", "design=x", "no pairs here", "é=ü;code"] {
            assert_eq!(redact_text(kept), kept);
        }
    }

    #[test]
    fn key_fields_are_masked_at_every_depth() {
        let body = json!({
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "p", "secondaryKey": "s"}},
            "properties": {"iotHubs": [{"connectionString": "HostName=h;SharedAccessKeyName=o;SharedAccessKey=k"}]},
            "tags": {"PrimaryKey": null, "keep": "value"},
        });
        assert_eq!(
            redact_json(body),
            json!({
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": REDACTED, "secondaryKey": REDACTED}},
                "properties": {"iotHubs": [{"connectionString": "HostName=h;SharedAccessKeyName=o;SharedAccessKey=<redacted>"}]},
                "tags": {"PrimaryKey": null, "keep": "value"},
            })
        );
    }

    #[test]
    fn records_method_path_query_allowed_headers_and_body_but_never_authorization() {
        let recorder = RequestRecorder::default();
        let request = parts(
            "PUT",
            "/enrollmentGroups/g%201?api-version=2021-10-01&sig=s3cret",
            &[
                (
                    "Authorization",
                    "SharedAccessSignature sr=x&sig=s3cret&se=1&skn=p",
                ),
                ("Content-Type", "application/json"),
                ("If-Match", "\"etag\""),
                ("User-Agent", "probe"),
            ],
        );
        // Nothing while no recording is active.
        recorder.record(&request, b"{}", "dps", 200);
        let start = recorder.start();
        recorder.record(
            &request,
            br#"{"attestation":{"symmetricKey":{"primaryKey":"k"}}}"#,
            "dps",
            200,
        );
        recorder.record(
            &parts("GET", "/x", &[]),
            b"not json; SharedAccessKey=k",
            "hub",
            404,
        );
        let recorded = recorder.since(start);
        assert_eq!(recorded.dropped, 0);
        let [first, second] = &recorded.requests[..] else {
            panic!("{recorded:?}")
        };
        assert_eq!(
            (first.method.as_str(), first.path.as_str()),
            ("PUT", "/enrollmentGroups/g%201")
        );
        assert_eq!(
            first.query,
            vec![
                ("api-version".to_string(), "2021-10-01".to_string()),
                ("sig".to_string(), REDACTED.to_string())
            ]
        );
        assert_eq!(
            first.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("if-match".to_string(), "\"etag\"".to_string())
            ]
        );
        assert_eq!(
            first.body,
            RecordedBody::Json(json!({"attestation": {"symmetricKey": {"primaryKey": REDACTED}}}))
        );
        assert_eq!((first.api, first.status, first.sequence), ("dps", 200, 0));
        assert_eq!(
            second.body,
            RecordedBody::Text("not json; SharedAccessKey=<redacted>".into())
        );
        assert_eq!((second.status, second.sequence), (404, 1));
        let serialized = serde_json::to_string(&recorded).unwrap();
        assert!(
            !serialized.contains("s3cret") && !serialized.contains("probe"),
            "{serialized}"
        );
        recorder.stop();
        assert!(!recorder.is_recording());
        assert!(
            recorder.since(0).requests.is_empty(),
            "forgotten once the last recording ends"
        );
    }

    #[test]
    fn bounded_by_count_and_body_size_with_losses_counted() {
        let recorder = RequestRecorder::new(3);
        let start = recorder.start();
        for i in 0..5 {
            recorder.record(
                &parts("GET", &format!("/devices/d{i}"), &[]),
                b"",
                "hub",
                200,
            );
        }
        let recorded = recorder.since(start);
        let paths: Vec<&str> = recorded.requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/devices/d2", "/devices/d3", "/devices/d4"]);
        assert_eq!((recorded.dropped, recorded.next), (2, 5));
        // A later recording sees only its own requests, and loses none.
        let later = recorder.start();
        assert!(recorder.since(later).requests.is_empty());
        assert_eq!(recorder.since(later).dropped, 0);
        let big = vec![b'a'; MAX_RECORDED_BODY + 1];
        recorder.record(&parts("POST", "/big", &[]), &big, "hub", 413);
        let [last] = &recorder.since(later).requests[..] else {
            panic!()
        };
        assert_eq!(
            (&last.body, last.body_size),
            (&RecordedBody::Omitted, big.len())
        );
        // Overlapping recordings: the first to stop leaves the other's requests in place.
        recorder.stop();
        assert_eq!(recorder.since(later).requests.len(), 1);
        recorder.stop();
        recorder.stop(); // one stop too many is harmless
        assert!(!recorder.is_recording());
    }
}
