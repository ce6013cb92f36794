//! The wall clock every layer reads: certificate validity, SAS token expiry, DPS and hub
//! timestamps. One function, so a test or a future simulated clock has one place to change.

/// Current Unix time in seconds (UTC).
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
