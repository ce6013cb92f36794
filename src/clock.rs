//! The wall clock every layer reads: certificate validity, SAS token expiry, DPS and hub
//! timestamps. One place (seconds, and milliseconds where Azure counts them), so a test or a
//! future simulated clock has one place to change.

/// Current Unix time in seconds (UTC).
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Current Unix time in milliseconds (UTC): for what Azure times to the millisecond (an AMQP
/// message's absolute expiry, a cloud-to-device message's time to live).
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
