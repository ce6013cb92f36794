//! Cloud-to-device messages as a back end sends them and IoT Hub answers them: the service-side
//! nodes (`/messages/devicebound` to send, `/messages/servicebound/feedback` for the outcome),
//! the acknowledgement a sender asks for (`iothub-ack`), the lifetime rules (default and longest
//! time to live, delivery count), and the feedback record IoT Hub writes for each outcome
//! (a JSON array of them is one feedback message, `application/vnd.microsoft.iothub.feedback.json`).
//!
//! Source: Azure's "Send cloud-to-device messages from an IoT hub" (the message life cycle,
//! the `ack` values, the feedback message's body and system properties, the hub's
//! `cloudToDevice` settings) and the service SDKs' `FeedbackRecord`/`FeedbackStatusCode`.
//! Both sides use these: the emulator writes feedback with them and dpskit's service client
//! reads it with them.

use serde::{Deserialize, Serialize};

/// The node a back end sends cloud-to-device messages to (AMQP target address path).
pub(crate) const DEVICEBOUND_NODE: &str = "/messages/devicebound";
/// The node a back end receives delivery feedback from (AMQP source address path; the same
/// path under the hub service API's REST, `serviceBound` spelled with a capital B there).
pub(crate) const FEEDBACK_NODE: &str = "/messages/servicebound/feedback";
/// The application property in which a sender asks for feedback.
pub(crate) const ACK_PROPERTY: &str = "iothub-ack";
/// The AMQP error condition a hub rejects a send with past its throttle.
pub(crate) const THROTTLED_CONDITION: &str = "com.microsoft:device-container-throttled";
/// The content type of a feedback message.
pub(crate) const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// A message's time to live when its sender sets no expiry (`cloudToDevice.defaultTtlAsIso8601`,
/// PT1H).
pub(crate) const DEFAULT_TTL_SECONDS: i64 = 3600;
/// The longest time to live a hub allows (P2D); a later expiry is capped to it.
pub(crate) const MAX_TTL_SECONDS: i64 = 2 * 24 * 3600;
/// Deliveries after which an uncompleted message is dead-lettered
/// (`cloudToDevice.maxDeliveryCount`, 10).
pub(crate) const MAX_DELIVERY_COUNT: u32 = 10;
/// How long a feedback message waits for a back end to take it (`feedback.ttlAsIso8601`, PT1H).
pub(crate) const FEEDBACK_TTL_SECONDS: i64 = 3600;
/// How long a received feedback message stays locked before it is offered again
/// (`feedback.lockDurationAsIso8601`, PT1M).
pub(crate) const FEEDBACK_LOCK_SECONDS: i64 = 60;

/// Deliveries of one feedback message before it is dead-lettered (`feedback.maxDeliveryCount`,
/// 10).
pub(crate) const MAX_FEEDBACK_DELIVERY_COUNT: u32 = 10;

/// The headers of a feedback message taken over the hub service API's REST
/// (`GET /messages/serviceBound/feedback`): its lock token is the `ETag`.
pub(crate) mod feedback_headers {
    /// The feedback message's id.
    pub(crate) const MESSAGE_ID: &str = "iothub-messageid";
    /// When the hub made the feedback message (UTC, ISO 8601).
    pub(crate) const ENQUEUED_TIME: &str = "iothub-enqueuedtime";
    /// How many times it was handed out, this time included.
    pub(crate) const DELIVERY_COUNT: &str = "iothub-deliverycount";
    /// When it leaves the queue untaken (UTC, ISO 8601).
    pub(crate) const EXPIRY: &str = "iothub-expiry";
    /// The hub's name.
    pub(crate) const USER_ID: &str = "iothub-userid";
}

/// When a cloud-to-device message expires, Unix milliseconds: the sender's absolute expiry
/// time, else its time to live from `now_ms`, else [`DEFAULT_TTL_SECONDS`]; never later than
/// [`MAX_TTL_SECONDS`] from now. The second value says whether the sender set it (IoT Hub
/// then tells the device, `$.exp`).
pub(crate) fn expiry_ms(absolute_ms: Option<i64>, ttl_ms: Option<i64>, now_ms: i64) -> (i64, bool) {
    let latest = now_ms + MAX_TTL_SECONDS * 1000;
    match absolute_ms.or_else(|| ttl_ms.map(|ttl| now_ms.saturating_add(ttl))) {
        Some(expiry) => (expiry.min(latest), true),
        None => (now_ms + DEFAULT_TTL_SECONDS * 1000, false),
    }
}

/// What a sender asks to hear about a message (`iothub-ack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryAck {
    /// Nothing (the default).
    #[default]
    None,
    /// A record when the device completes the message.
    Positive,
    /// A record when the message expires, is dead-lettered or rejected without completion.
    Negative,
    /// Both.
    Full,
}

impl DeliveryAck {
    /// Reads an `iothub-ack` value; the four names the service SDKs write, nothing else.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        match value {
            "none" => Ok(Self::None),
            "positive" => Ok(Self::Positive),
            "negative" => Ok(Self::Negative),
            "full" => Ok(Self::Full),
            other => Err(format!(
                "'{ACK_PROPERTY}' must be none, positive, negative or full, not '{other}'."
            )),
        }
    }

    /// The value as written in `iothub-ack`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Full => "full",
        }
    }

    /// Whether a message's outcome is reported to its sender under this request.
    pub(crate) fn reports(self, outcome: FeedbackStatus) -> bool {
        match self {
            Self::None => false,
            Self::Full => true,
            Self::Positive => outcome == FeedbackStatus::Success,
            Self::Negative => outcome != FeedbackStatus::Success,
        }
    }
}

/// The outcome of a cloud-to-device message, as a feedback record's `statusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FeedbackStatus {
    /// The device completed it.
    Success,
    /// Its time to live ran out before the device completed it.
    Expired,
    /// It was delivered [`MAX_DELIVERY_COUNT`] times without being completed.
    DeliveryCountExceeded,
    /// The device rejected it.
    Rejected,
    /// The queue was purged before the device completed it.
    Purged,
}

impl FeedbackStatus {
    /// The `statusCode` as written in a record (the variant's name, as serde writes it).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Expired",
            Self::DeliveryCountExceeded => "DeliveryCountExceeded",
            Self::Rejected => "Rejected",
            Self::Purged => "Purged",
        }
    }

    /// The record's `description` for this outcome.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Message Expired",
            Self::DeliveryCountExceeded => "Message Delivery Count Exceeded",
            Self::Rejected => "Message Rejected",
            Self::Purged => "Message Purged",
        }
    }
}

/// One outcome in a feedback message's body (a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FeedbackRecord {
    /// The id of the cloud-to-device message this is about.
    pub original_message_id: String,
    /// When the outcome happened (UTC, ISO 8601).
    pub enqueued_time_utc: String,
    /// The outcome.
    pub status_code: FeedbackStatus,
    /// The outcome in words.
    pub description: String,
    /// The device the message was for.
    pub device_id: String,
    /// The generation of that device's identity.
    pub device_generation_id: String,
}

/// Reads a feedback message's body; anything but an array of complete records is refused.
// Read by the service client's feedback receiver; the emulator only writes feedback (its tests
// read it back with this).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn parse_feedback(body: &[u8]) -> Result<Vec<FeedbackRecord>, String> {
    serde_json::from_slice(body).map_err(|e| format!("A feedback message is not valid: {e}."))
}

impl FeedbackRecord {
    /// When the outcome happened, Unix milliseconds: `enqueuedTimeUtc` read as RFC 3339 (IoT
    /// Hub writes up to seven fraction digits and `Z`); `Err` when it does not read.
    pub(crate) fn enqueued_unix_ms(&self) -> Result<i64, String> {
        let at = time::OffsetDateTime::parse(
            &self.enqueued_time_utc,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| {
            format!(
                "A feedback record's enqueuedTimeUtc {:?} is not a time: {e}.",
                self.enqueued_time_utc
            )
        })?;
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{:?} is out of range.", self.enqueued_time_utc))
    }
}

/// The AMQP error conditions IoT Hub rejects a cloud-to-device send with, as the status and
/// error code of the hub service API's same refusal (the service SDKs' error mappers: an
/// unknown device, a full queue, a message too large, a spent quota, a throttle). A
/// description that carries IoT Hub's six-digit error code (`404 (404001): ...`,
/// `ErrorCode:404001`) is more precise than its condition and wins.
pub(crate) fn send_refusal(condition: &str, description: &str) -> (u16, Option<u32>) {
    if let Some(code) = error_code_in(description) {
        return ((code / 1000) as u16, Some(code));
    }
    match condition {
        "amqp:not-found" | "com.microsoft:device-not-found" => (404, Some(404_001)),
        "amqp:resource-limit-exceeded" | "com.microsoft:device-maximum-queue-depth-exceeded" => {
            (403, Some(403_004))
        }
        "com.microsoft:quota-exceeded" | "com.microsoft:iot-hub-quota-exceeded" => {
            (403, Some(403_002))
        }
        "amqp:link:message-size-exceeded" => (413, Some(413_001)),
        "amqp:unauthorized-access" => (401, None),
        THROTTLED_CONDITION | "com.microsoft:server-busy" => (429, Some(429_001)),
        "amqp:precondition-failed" => (412, None),
        "amqp:invalid-field" | "amqp:decode-error" | "amqp:not-allowed" => (400, None),
        _ => (500, None),
    }
}

/// The first six-digit number in `text` that reads as an IoT Hub error code (its first three
/// digits an HTTP error status, 400 to 599).
fn error_code_in(text: &str) -> Option<u32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|run| run.len() == 6)
        .filter_map(|run| run.parse::<u32>().ok())
        .find(|code| (400_000..600_000).contains(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_values_round_trip_and_choose_what_is_reported() {
        for ack in [
            DeliveryAck::None,
            DeliveryAck::Positive,
            DeliveryAck::Negative,
            DeliveryAck::Full,
        ] {
            assert_eq!(DeliveryAck::parse(ack.as_str()), Ok(ack));
        }
        assert!(DeliveryAck::parse("Full").is_err());
        assert!(DeliveryAck::parse("").is_err());
        assert!(DeliveryAck::Positive.reports(FeedbackStatus::Success));
        assert!(!DeliveryAck::Positive.reports(FeedbackStatus::Expired));
        assert!(DeliveryAck::Negative.reports(FeedbackStatus::DeliveryCountExceeded));
        assert!(!DeliveryAck::Negative.reports(FeedbackStatus::Success));
        assert!(DeliveryAck::Full.reports(FeedbackStatus::Purged));
        assert!(!DeliveryAck::None.reports(FeedbackStatus::Rejected));
    }

    #[test]
    fn an_expiry_is_the_senders_within_the_hubs_longest_or_the_default() {
        let now = 1_000_000;
        assert_eq!(expiry_ms(Some(now + 5), None, now), (now + 5, true));
        assert_eq!(expiry_ms(None, Some(7), now), (now + 7, true));
        assert_eq!(
            expiry_ms(Some(now + 5), Some(7), now),
            (now + 5, true),
            "the absolute time wins over the time to live"
        );
        assert_eq!(
            expiry_ms(Some(i64::MAX), None, now),
            (now + MAX_TTL_SECONDS * 1000, true)
        );
        assert_eq!(
            expiry_ms(None, None, now),
            (now + DEFAULT_TTL_SECONDS * 1000, false)
        );
    }

    #[test]
    fn status_names_are_the_ones_records_carry() {
        for status in [
            FeedbackStatus::Success,
            FeedbackStatus::Expired,
            FeedbackStatus::DeliveryCountExceeded,
            FeedbackStatus::Rejected,
            FeedbackStatus::Purged,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
        }
    }

    /// The body of Azure's documented feedback message example reads, and writes back with the
    /// member names and order it has.
    #[test]
    fn feedback_reads_azures_documented_body() {
        let documented = br#"[{"originalMessageId":"0987654321","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z","statusCode":"Success","description":"Success","deviceId":"123","deviceGenerationId":"abcdefghijklmnopqrstuvwxyz"}]"#;
        let records = parse_feedback(documented).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status_code, FeedbackStatus::Success);
        assert_eq!(records[0].device_id, "123");
        assert_eq!(
            serde_json::to_vec(&records).unwrap(),
            documented.to_vec(),
            "written as read"
        );
        assert!(parse_feedback(br#"[{"originalMessageId":"1"}]"#).is_err());
        assert!(parse_feedback(br#"{"statusCode":"Success"}"#).is_err());
        let unknown = br#"[{"originalMessageId":"1","enqueuedTimeUtc":"t","statusCode":"Lost","description":"","deviceId":"d","deviceGenerationId":"g"}]"#;
        assert!(parse_feedback(unknown).is_err());
    }
    #[test]
    fn feedback_times_read_with_azures_seven_fraction_digits() {
        let mut record = parse_feedback(br#"[{"originalMessageId":"m","enqueuedTimeUtc":"2015-07-28T16:24:48.789Z","statusCode":"Expired","description":"Message Expired","deviceId":"d","deviceGenerationId":"g"}]"#).unwrap().remove(0);
        assert_eq!(record.enqueued_unix_ms(), Ok(1_438_100_688_789));
        record.enqueued_time_utc = "2015-07-28T16:24:48.7891234Z".into();
        assert_eq!(record.enqueued_unix_ms(), Ok(1_438_100_688_789));
        record.enqueued_time_utc = "yesterday".into();
        assert!(record.enqueued_unix_ms().is_err());
    }

    #[test]
    fn send_refusals_read_as_the_service_apis_statuses() {
        assert_eq!(send_refusal("amqp:not-found", ""), (404, Some(404_001)));
        assert_eq!(
            send_refusal("amqp:resource-limit-exceeded", "queue full"),
            (403, Some(403_004))
        );
        assert_eq!(
            send_refusal("amqp:link:message-size-exceeded", ""),
            (413, Some(413_001))
        );
        // The code in the description wins over a generic condition.
        assert_eq!(
            send_refusal("amqp:not-allowed", "404 (404001): Device 'x' not found."),
            (404, Some(404_001))
        );
        assert_eq!(
            send_refusal(
                "amqp:not-allowed",
                "ErrorCode:403004;Device 'x' has 50 messages"
            ),
            (403, Some(403_004))
        );
        // Numbers that are not error codes are not taken for one.
        assert_eq!(
            send_refusal("amqp:invalid-field", "device 123456 at 2026"),
            (400, None)
        );
        assert_eq!(send_refusal("x:unknown", ""), (500, None));
    }
}
