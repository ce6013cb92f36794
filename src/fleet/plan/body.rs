//! JSON and time output: message bodies written byte for byte, without a serialiser.

use super::*;

/// Writes a sample with its spike and rounding; returns whether a spike was applied (only
/// numbers take spikes).
pub(super) fn write_sample(
    body: &mut Vec<u8>,
    sample: Sample<'_>,
    spike: Option<f64>,
    round: Option<u32>,
) -> bool {
    match (sample, spike) {
        (Sample::Num(n), Some(s)) => {
            write_num(body, Num::Float(n.float() + s), round);
            true
        }
        (Sample::Num(n), None) => {
            write_num(body, n, round);
            false
        }
        (Sample::Json(Value::Number(n)), Some(s)) => {
            write_num(body, Num::Float(n.as_f64().unwrap_or(f64::NAN) + s), round);
            true
        }
        (Sample::Json(Value::Number(n)), None) if round.is_some() && n.is_f64() => {
            write_num(body, Num::Float(n.as_f64().unwrap_or(f64::NAN)), round);
            false
        }
        (Sample::Json(value), _) => {
            write_json(body, value);
            false
        }
        (Sample::Null, _) => {
            body.extend_from_slice(b"null");
            false
        }
    }
}

/// Exact powers of ten (all representable in f64), so rounding is the same on every platform.
pub(super) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Rounds to `places` decimals (half away from zero on the binary value). Beyond 22 places an
/// f64 has no digits left to drop, so the value is returned as is.
pub(super) fn round_to(x: f64, places: u32) -> f64 {
    let Some(&scale) = POW10.get(places as usize) else {
        return x;
    };
    let scaled = x * scale;
    if scaled.is_finite() {
        scaled.round() / scale
    } else {
        x
    }
}

/// 2^53: above it an f64 is already an integer, and not every i64 is exact.
pub(super) const EXACT_INT: f64 = 9_007_199_254_740_992.0;

pub(super) fn write_num(body: &mut Vec<u8>, n: Num, round: Option<u32>) {
    match n {
        Num::Int(i) => {
            let _ = write!(body, "{i}");
        }
        Num::Float(x) if !x.is_finite() => body.extend_from_slice(b"null"),
        Num::Float(x) => match round {
            Some(0) if x.abs() < EXACT_INT => {
                let _ = write!(body, "{}", x.round() as i64);
            }
            Some(places) => write_float(body, round_to(x, places)),
            None => write_float(body, x),
        },
    }
}

/// Shortest round-trip form (ryu via serde_json), `null` for non-finite values.
pub(super) fn write_float(body: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let _ = serde_json::to_writer(&mut *body, &x);
    } else {
        body.extend_from_slice(b"null");
    }
}

pub(super) fn write_json(body: &mut Vec<u8>, value: &Value) {
    // Writing a Value into a Vec cannot fail (keys are strings, the sink is infallible).
    let _ = serde_json::to_writer(&mut *body, value);
}

pub(super) fn write_int(body: &mut Vec<u8>, n: u64) {
    body.extend_from_slice(itoa_u64(n, &mut [0; 20]).as_bytes());
}

pub(super) fn itoa_u64(mut n: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

pub(super) fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

pub(super) fn json_key(name: &str) -> String {
    let mut key = json_string(name);
    key.push(':');
    key
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, always with milliseconds, so timestamps sort as strings and
/// parse with any RFC 3339 reader. Out-of-range values are clamped to years 0000–9999.
pub(super) fn write_timestamp(body: &mut Vec<u8>, unix_ms: i64) {
    let ms = unix_ms.clamp(MIN_TS_MS, MAX_TS_MS);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let fields: [(i64, usize, u8); 7] = [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (in_day / 3_600_000, 2, b':'),
        (in_day / 60_000 % 60, 2, b':'),
        (in_day / 1000 % 60, 2, b'.'),
        (in_day % 1000, 3, b'Z'),
    ];
    for (value, width, separator) in fields {
        let mut divisor = 10_i64.pow(width as u32 - 1);
        while divisor > 0 {
            body.push(b'0' + (value / divisor % 10) as u8);
            divisor /= 10;
        }
        body.push(separator);
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`): integer-only and exact.
pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(super) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(MAX_TS_MS))
}

/// Seconds to a Duration: negative and NaN become 0, overflow saturates.
pub(super) fn seconds(secs: f64) -> Duration {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}
