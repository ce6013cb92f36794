//! The wall clock every layer reads: certificate validity, SAS token expiry, DPS and hub
//! timestamps. One function, so a test or a future simulated clock has one place to change.

/// Current Unix time in seconds (UTC).
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Current Unix time in milliseconds (UTC): AMQP timestamps (a message's absolute expiry).
pub(crate) fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}
