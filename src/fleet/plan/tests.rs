//! The plan's tests: validation, reproducibility, the bodies and the math.

use super::*;

const START_MS: i64 = 1_764_400_000_000;

fn plan(json: &str) -> TelemetryPlan {
    TelemetryPlan::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// A plan with one field using `generator`, `count` messages at 1 s.
fn one_field(generator: &str, count: u64) -> TelemetryPlan {
    plan(&format!(
        r#"{{"interval":1,"count":{count},"seed":7,"start_unix_ms":{START_MS},
            "fields":[{{"name":"x","generator":{generator}}}]}}"#
    ))
}

fn bodies(plan: &TelemetryPlan, device: u64) -> Vec<Value> {
    plan.device_stream(device, &format!("dev-{device}"), Vec::new())
        .map(|m| serde_json::from_slice(&m.body).expect("body is JSON"))
        .collect()
}

fn values(plan: &TelemetryPlan, device: u64) -> Vec<Value> {
    bodies(plan, device)
        .into_iter()
        .map(|b| b["x"].clone())
        .collect()
}

fn floats(plan: &TelemetryPlan) -> Vec<f64> {
    values(plan, 0)
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn config_error(json: &str) -> String {
    match TelemetryPlan::from_json(json) {
        Err(Error::Config(message)) => message.to_string(),
        Err(other) => panic!("{json}: not a Config error: {other:?}"),
        Ok(_) => panic!("{json}: accepted"),
    }
}

#[test]
fn splitmix_and_xoshiro_match_the_reference_algorithms() {
    // splitmix64 seeded with 0 (reference outputs of Vigna's splitmix64.c).
    let mut state = 0_u64;
    let mut outputs = Vec::new();
    for _ in 0..3 {
        outputs.push(splitmix64(state));
        state = state.wrapping_add(GOLDEN_GAMMA);
    }
    assert_eq!(
        outputs,
        [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
    );
    // xoshiro256** seeded by splitmix64(12345), checked against an independent
    // implementation of the reference C code.
    let mut rng = Rng::new(12345);
    let outputs: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
    assert_eq!(
        outputs,
        [
            0xbe6a36374160d49b,
            0x214aaa0637a688c6,
            0xf69d16de9954d388,
            0x0c60048c4e96e033
        ]
    );
}

#[test]
fn portable_math_matches_std() {
    for i in 0..=4000 {
        let turns = i as f64 / 1000.0 - 2.0; // [-2, 2] turns
        let (sin, cos) = sin_cos_turns(turns);
        let angle = turns * std::f64::consts::TAU;
        assert!((sin - angle.sin()).abs() < 1e-14, "sin at {turns}");
        assert!((cos - angle.cos()).abs() < 1e-14, "cos at {turns}");
    }
    for i in 1..=4000 {
        let x = i as f64 / 997.0;
        assert!(
            (ln(x) - x.ln()).abs() <= 4e-16 * x.ln().abs().max(1.0),
            "ln {x}"
        );
    }
    for x in [1e-300, 5e-324, 2.0_f64.powi(-53), 1.0, 1e300, f64::MAX] {
        assert!(
            (ln(x) - x.ln()).abs() <= 1e-15 * x.ln().abs().max(1.0),
            "ln {x}"
        );
    }
    assert_eq!(ln(1.0), 0.0);
    assert_eq!(sin_cos_turns(0.0), (0.0, 1.0));
}

#[test]
fn same_seed_and_device_reproduce_the_stream() {
    let json = format!(
        r#"{{"interval":0.5,"jitter":0.3,"count":50,"seed":42,"start_unix_ms":{START_MS},
            "dropout_rate":0.2,"duplicate_rate":0.2,
            "fields":[
              {{"name":"t","generator":{{"kind":"sum","parts":[
                  {{"kind":"sine","mean":20,"amplitude":5,"period":30}},
                  {{"kind":"gaussian","mean":0,"std":0.5}},
                  {{"kind":"random_walk","start":0,"step":0.1}}]}},
                "anomaly_rate":0.1,"anomaly_scale":10,"round":2}},
              {{"name":"mode","generator":{{"kind":"choice","values":["a","b",3]}}}}]}}"#
    );
    let a: Vec<PlannedMessage> = plan(&json).device_stream(3, "d", Vec::new()).collect();
    let b: Vec<PlannedMessage> = plan(&json).device_stream(3, "d", Vec::new()).collect();
    assert_eq!(a.len(), 50);
    assert_eq!(a, b);
    let other: Vec<PlannedMessage> = plan(&json).device_stream(4, "d", Vec::new()).collect();
    assert_ne!(
        a.iter().map(|m| &m.body).collect::<Vec<_>>(),
        other.iter().map(|m| &m.body).collect::<Vec<_>>()
    );
    assert_ne!(
        plan(&json).device_stream(3, "d", Vec::new()).phase(),
        plan(&json).device_stream(4, "d", Vec::new()).phase()
    );
    let reseeded = json.replace("\"seed\":42", "\"seed\":43");
    let c: Vec<PlannedMessage> = plan(&reseeded).device_stream(3, "d", Vec::new()).collect();
    assert_ne!(a[1].body, c[1].body);
}

#[test]
fn stream_is_pinned_across_versions() {
    // Changing this output breaks reproducibility of users' data sets: only on purpose.
    let p = plan(&format!(
        r#"{{"interval":1,"jitter":0.5,"count":3,"seed":42,"start_unix_ms":{START_MS},
            "fields":[{{"name":"g","generator":{{"kind":"gaussian","mean":10,"std":2}}}},
                      {{"name":"s","generator":{{"kind":"sine","mean":0,"amplitude":1,"period":60}},"round":4}}]}}"#
    ));
    let messages: Vec<PlannedMessage> = p.device_stream(0, "dev-0", Vec::new()).collect();
    assert_eq!(
        String::from_utf8(messages[0].body.clone()).expect("utf-8"),
        r#"{"deviceId":"dev-0","seq":0,"ts":"2025-11-29T07:06:40.000Z","g":10.68529549441127,"s":-0.9955}"#
    );
    let got: Vec<(String, u128)> = messages
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_slice(&m.body).expect("JSON");
            (format!("{} {}", body["g"], body["s"]), m.send_at.as_nanos())
        })
        .collect();
    let pinned: Vec<(String, u128)> = PINNED.iter().map(|(v, t)| (v.to_string(), *t)).collect();
    assert_eq!(got, pinned);
}

/// Checked against an independent Python implementation (equal up to its libm's last
/// bits): gaussian value and rounded sine, and send offset in nanoseconds.
const PINNED: [(&str, u128); 3] = [
    ("10.68529549441127 -0.9955", 452_680_922),
    ("13.839865095097505 -0.9999", 1_481_130_105),
    ("11.1992825847964 -0.9934", 2_849_901_134),
];

#[test]
fn uniform_stays_in_bounds_with_the_right_mean() {
    let xs = floats(&one_field(
        r#"{"kind":"uniform","low":10,"high":20}"#,
        10_000,
    ));
    assert!(xs.iter().all(|x| (10.0..20.0).contains(x)));
    let (mean, std) = mean_std(&xs);
    assert!((mean - 15.0).abs() < 0.15, "mean {mean}");
    // Uniform on a width of 10: std = 10/sqrt(12).
    assert!((std - 10.0 / 12f64.sqrt()).abs() < 0.1, "std {std}");
}

#[test]
fn gaussian_has_the_right_mean_and_std() {
    let xs = floats(&one_field(
        r#"{"kind":"gaussian","mean":5,"std":2}"#,
        10_000,
    ));
    let (mean, std) = mean_std(&xs);
    assert!((mean - 5.0).abs() < 0.08, "mean {mean}");
    assert!((std - 2.0).abs() < 0.08, "std {std}");
    // Tails exist but are rare: about 4.6% beyond 2 sigma.
    let beyond = xs.iter().filter(|x| (*x - 5.0).abs() > 4.0).count();
    assert!((300..650).contains(&beyond), "{beyond} beyond 2 sigma");
}

#[test]
fn random_walk_starts_at_start_and_stays_in_bounds() {
    let xs = floats(&one_field(
        r#"{"kind":"random_walk","start":50,"step":5,"low":40,"high":60}"#,
        2000,
    ));
    assert_eq!(xs[0], 50.0);
    assert!(xs.iter().all(|x| (40.0..=60.0).contains(x)));
    // It moves, and with step 5 in a width of 20 it reaches both walls.
    assert!(xs.contains(&40.0) && xs.contains(&60.0));
    assert!(xs.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn sine_stays_within_amplitude_and_repeats_each_period() {
    let p = plan(&format!(
        r#"{{"interval":1,"time_scale":2,"count":100,"start_unix_ms":{START_MS},
            "fields":[{{"name":"x","generator":
              {{"kind":"sine","mean":10,"amplitude":3,"period":20,"phase":1.5}}}}]}}"#
    ));
    let xs = floats(&p);
    assert!(xs.iter().all(|x| (7.0..=13.0).contains(x)));
    // Period 20 simulated s = 10 messages at 2 simulated s each.
    for k in 0..90 {
        assert!((xs[k] - xs[k + 10]).abs() < 1e-9, "k={k}");
    }
    let expected = 10.0 + 3.0 * (std::f64::consts::TAU * (2.0 * 3.0 + 1.5) / 20.0).sin();
    assert!((xs[3] - expected).abs() < 1e-12);
    assert!(xs.iter().any(|x| *x > 12.5) && xs.iter().any(|x| *x < 7.5));
    // Without a phase every device gets its own.
    let random = one_field(r#"{"kind":"sine","mean":0,"amplitude":1,"period":60}"#, 1);
    assert_ne!(values(&random, 0), values(&random, 1));
}

#[test]
fn steps_cycle_and_keep_integers() {
    let p = plan(&format!(
        r#"{{"interval":0.1,"count":14,"start_unix_ms":{START_MS},
            "fields":[{{"name":"x","generator":{{"kind":"steps","values":[1,2,3.5],"every":0.3}}}}]}}"#
    ));
    let body: Vec<String> = values(&p, 0).iter().map(|v| v.to_string()).collect();
    assert_eq!(
        body,
        [
            "1", "1", "1", "2", "2", "2", "3.5", "3.5", "3.5", "1", "1", "1", "2", "2"
        ]
    );
}

#[test]
fn step_change_jumps_by_size_at_the_given_rate() {
    let never = values(
        &one_field(r#"{"kind":"step_change","start":5,"size":2,"rate":0}"#, 50),
        0,
    );
    assert!(never.iter().all(|v| v == &Value::from(5)));
    let always = values(
        &one_field(r#"{"kind":"step_change","start":5,"size":2,"rate":1}"#, 200),
        0,
    );
    assert_eq!(always[0], Value::from(5));
    for w in always.windows(2) {
        let (a, b) = (w[0].as_i64().expect("int"), w[1].as_i64().expect("int"));
        assert_eq!((a - b).abs(), 2);
    }
    let some = floats(&one_field(
        r#"{"kind":"step_change","start":0,"size":1.5,"rate":0.1}"#,
        10_000,
    ));
    let jumps = some.windows(2).filter(|w| w[0] != w[1]).count();
    assert!((850..1150).contains(&jumps), "{jumps} jumps");
}

#[test]
fn counters_constants_choices_and_values() {
    let ints = values(&one_field(r#"{"kind":"counter","start":5,"step":2}"#, 3), 0);
    assert_eq!(ints, [Value::from(5), Value::from(7), Value::from(9)]);
    let halves = values(&one_field(r#"{"kind":"counter","step":0.5}"#, 3), 0);
    assert_eq!(
        halves,
        [Value::from(0.0), Value::from(0.5), Value::from(1.0)]
    );
    let object = values(
        &one_field(r#"{"kind":"constant","value":{"a":[1,"x"],"b":null}}"#, 2),
        0,
    );
    assert_eq!(object[1], serde_json::json!({"a":[1,"x"],"b":null}));
    let integer = bodies(&one_field(r#"{"kind":"constant","value":12}"#, 1), 0);
    assert_eq!(integer[0]["x"], Value::from(12));
    let cycled = values(
        &one_field(r#"{"kind":"values","values":["a",2,true]}"#, 7),
        0,
    );
    assert_eq!(
        cycled,
        serde_json::json!(["a", 2, true, "a", 2, true, "a"])
            .as_array()
            .unwrap()
            .clone()
    );

    let picks = values(
        &one_field(
            r#"{"kind":"choice","values":["a","never","b"],"weights":[1,0,3]}"#,
            10_000,
        ),
        0,
    );
    let a = picks.iter().filter(|v| *v == "a").count();
    let b = picks.iter().filter(|v| *v == "b").count();
    assert_eq!(a + b, 10_000, "zero weight picked");
    assert!((2300..2700).contains(&a), "{a} a's");
    let uniform = values(
        &one_field(r#"{"kind":"choice","values":[1,2,3,4]}"#, 8000),
        0,
    );
    for v in 1..=4 {
        let n = uniform.iter().filter(|x| x.as_i64() == Some(v)).count();
        assert!((1800..2200).contains(&n), "{v}: {n}");
    }
}

#[test]
fn sum_adds_parts_and_keeps_integers_when_all_are() {
    let ints = values(
        &one_field(
            r#"{"kind":"sum","parts":[{"kind":"counter","start":10},{"kind":"constant","value":5}]}"#,
            3,
        ),
        0,
    );
    assert_eq!(ints, [Value::from(15), Value::from(16), Value::from(17)]);
    let mixed = floats(&one_field(
        r#"{"kind":"sum","parts":[{"kind":"counter"},{"kind":"uniform","low":0,"high":0.5}]}"#,
        100,
    ));
    for (k, x) in mixed.iter().enumerate() {
        assert!((k as f64..k as f64 + 0.5).contains(x), "{k}: {x}");
    }
}

#[test]
fn dropout_duplicate_and_anomaly_rates_match() {
    let p = plan(&format!(
        r#"{{"interval":1,"count":10000,"start_unix_ms":{START_MS},
            "dropout_rate":0.1,"duplicate_rate":0.2,
            "fields":[{{"name":"x","generator":{{"kind":"random_walk","start":10,"step":0}},
                       "anomaly_rate":0.05,"anomaly_scale":100}}]}}"#
    ));
    let messages: Vec<PlannedMessage> = p.device_stream(0, "d", Vec::new()).collect();
    let dropped = messages.iter().filter(|m| m.copies == 0).count();
    let duplicated = messages.iter().filter(|m| m.copies == 2).count();
    let anomalies = messages.iter().filter(|m| m.anomaly).count();
    assert!((900..1100).contains(&dropped), "{dropped} dropped");
    // Duplicates are decided among the messages that are not dropped: 0.9 × 0.2.
    assert!(
        (1620..1980).contains(&duplicated),
        "{duplicated} duplicated"
    );
    assert!((420..580).contains(&anomalies), "{anomalies} anomalies");
    // Spikes are ±scale on the output only: the walk itself never moves.
    for m in &messages {
        let x = serde_json::from_slice::<Value>(&m.body).unwrap()["x"]
            .as_f64()
            .unwrap();
        if m.anomaly {
            assert!(x == 110.0 || x == -90.0, "{x}");
        } else {
            assert_eq!(x, 10.0);
        }
    }
    assert!(
        messages
            .iter()
            .any(|m| m.anomaly && m.body.windows(5).any(|w| w == b"-90.0"))
    );
}

#[test]
fn faults_do_not_change_the_signal() {
    let base = format!(
        r#"{{"interval":1,"count":300,"seed":9,"start_unix_ms":{START_MS},
            "fields":[{{"name":"x","generator":{{"kind":"gaussian","mean":0,"std":1}}}},
                      {{"name":"y","generator":{{"kind":"random_walk","start":0,"step":1}}}}]}}"#
    );
    let faulty = base.replace(
        "\"start_unix_ms\"",
        "\"dropout_rate\":0.3,\"duplicate_rate\":0.3,\"jitter\":0.5,\"start_unix_ms\"",
    );
    assert_eq!(bodies(&plan(&base), 2), bodies(&plan(&faulty), 2));
    // Adding a field leaves the existing ones alone.
    let more = base.replace(
        "]}",
        r#",{"name":"z","generator":{"kind":"uniform","low":0,"high":1}}]}"#,
    );
    let (a, b) = (bodies(&plan(&base), 2), bodies(&plan(&more), 2));
    for (a, b) in a.iter().zip(&b) {
        assert_eq!((&a["x"], &a["y"]), (&b["x"], &b["y"]));
    }
}

#[test]
fn messages_per_device_from_count_duration_or_both() {
    let count = |json: &str| plan(json).messages_per_device();
    assert_eq!(count(r#"{"interval":1,"count":7}"#), 7);
    assert_eq!(count(r#"{"interval":1,"duration":60}"#), 60);
    assert_eq!(count(r#"{"interval":0.1,"duration":0.3}"#), 3);
    assert_eq!(count(r#"{"interval":2,"duration":5}"#), 2);
    assert_eq!(count(r#"{"interval":10,"duration":0.5}"#), 1);
    assert_eq!(count(r#"{"interval":1,"duration":0}"#), 0);
    assert_eq!(count(r#"{"interval":1,"duration":60,"count":10}"#), 10);
    assert_eq!(count(r#"{"interval":1,"duration":6,"count":10}"#), 6);
    assert_eq!(count(r#"{"interval":0,"duration":6,"count":10}"#), 10);
    assert_eq!(count(r#"{"interval":0,"count":4}"#), 4);
    let p = plan(r#"{"interval":0.25,"duration":2,"start_unix_ms":0}"#);
    let mut stream = p.device_stream(0, "d", Vec::new());
    assert_eq!(stream.size_hint(), (8, Some(8)));
    assert_eq!(stream.by_ref().count(), 8);
    assert!(stream.next().is_none());
}

#[test]
fn schedule_has_phase_interval_and_bounded_jitter() {
    let p = plan(r#"{"interval":2,"jitter":0.4,"count":500,"start_unix_ms":0}"#);
    assert_eq!(p.interval(), Duration::from_secs(2));
    let mut phases = Vec::new();
    for device in 0..50 {
        let stream = p.device_stream(device, "d", Vec::new());
        let phase = stream.phase().as_secs_f64();
        assert!((0.0..2.0).contains(&phase), "phase {phase}");
        phases.push(phase);
        let mut off_nominal = 0;
        for m in stream {
            let nominal = phase + m.seq as f64 * 2.0;
            let delta = m.send_at.as_secs_f64() - nominal;
            // ±jitter/2 × interval = ±0.4 s (clamped at 0 before the start).
            assert!(delta.abs() <= 0.4 + 1e-9, "seq {}: {delta}", m.seq);
            off_nominal += usize::from(delta.abs() > 0.1);
        }
        assert!(off_nominal > 200, "jitter too narrow: {off_nominal}");
    }
    // Devices are spread over the interval, not in lockstep.
    let (mean, _) = mean_std(&phases);
    assert!((0.6..1.4).contains(&mean), "mean phase {mean}");

    let fast = plan(r#"{"interval":0,"jitter":1,"count":3,"start_unix_ms":0}"#);
    let stream = fast.device_stream(1, "d", Vec::new());
    assert_eq!(stream.phase(), Duration::ZERO);
    assert!(stream.map(|m| m.send_at).all(|t| t == Duration::ZERO));
}

#[test]
fn body_has_keys_in_order_and_timestamps_advance() {
    let p = plan(
        r#"{"interval":1.5,"time_scale":60,"count":4,"start_unix_ms":1764400000123,
            "fields":[{"name":"temperature","generator":{"kind":"counter"}},
                      {"name":"state","generator":{"kind":"constant","value":"on"}}]}"#,
    );
    let custom = vec![
        (
            "label".to_string(),
            vec![Value::from("a"), Value::from("b")],
        ),
        ("empty".to_string(), Vec::new()),
    ];
    let messages: Vec<PlannedMessage> = p.device_stream(0, "dev \"7\"", custom).collect();
    let text = String::from_utf8(messages[1].body.clone()).unwrap();
    assert_eq!(
        text,
        r#"{"deviceId":"dev \"7\"","seq":1,"ts":"2025-11-29T07:08:10.123Z","temperature":1,"state":"on","label":"b"}"#
    );
    assert_eq!(messages[1].message_id, "dev \"7\"-1");
    let stamps: Vec<String> = messages
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_slice(&m.body).unwrap();
            assert_eq!(body["seq"], Value::from(m.seq));
            assert_eq!(body["label"], if m.seq % 2 == 0 { "a" } else { "b" });
            body["ts"].as_str().unwrap().to_string()
        })
        .collect();
    // 1.5 s × 60 = 90 simulated seconds per message.
    assert_eq!(
        stamps,
        [
            "2025-11-29T07:06:40.123Z",
            "2025-11-29T07:08:10.123Z",
            "2025-11-29T07:09:40.123Z",
            "2025-11-29T07:11:10.123Z"
        ]
    );
}

#[test]
fn timestamps_agree_with_the_time_crate() {
    let mut ms = MIN_TS_MS;
    let mut checked = 0;
    while ms <= MAX_TS_MS {
        let mut body = Vec::new();
        write_timestamp(&mut body, ms);
        let dt =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
        let expected = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        );
        assert_eq!(String::from_utf8(body).unwrap(), expected);
        checked += 1;
        ms += 3_157_432_123_457; // ~100 years plus odd days and milliseconds
    }
    assert!(checked > 90);
    for (ms, text) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (MAX_TS_MS, "9999-12-31T23:59:59.999Z"),
        (i64::MAX, "9999-12-31T23:59:59.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ] {
        let mut body = Vec::new();
        write_timestamp(&mut body, ms);
        assert_eq!(String::from_utf8(body).unwrap(), text);
    }
}

#[test]
fn round_limits_decimals_and_zero_gives_integers() {
    let two = bodies(
        &plan(&format!(
            r#"{{"interval":1,"count":200,"start_unix_ms":{START_MS},"fields":[
                {{"name":"x","generator":{{"kind":"uniform","low":-100,"high":100}},"round":2}},
                {{"name":"y","generator":{{"kind":"gaussian","mean":50,"std":20}},"round":0}},
                {{"name":"z","generator":{{"kind":"constant","value":1.23456}},"round":3}},
                {{"name":"n","generator":{{"kind":"constant","value":1234567}},"round":1}}]}}"#
        )),
        0,
    );
    for body in &two {
        let x = body["x"].as_f64().unwrap();
        assert!(((x * 100.0).round() - x * 100.0).abs() < 1e-6, "{x}");
        let text = body["x"].to_string();
        let decimals = text.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 2, "{text}");
        assert!(body["y"].is_i64(), "{}", body["y"]);
        assert_eq!(body["z"], Value::from(1.235));
        assert_eq!(body["n"], Value::from(1234567));
    }
    assert_eq!(round_to(2.675, 30), 2.675);
    assert_eq!(round_to(1e300, 10), 1e300);
}

#[test]
fn validation_names_the_problem() {
    let field = |generator: &str| {
        config_error(&format!(
            r#"{{"interval":1,"count":1,"fields":[{{"name":"temp","generator":{generator}}}]}}"#
        ))
    };
    for (generator, expected) in [
        (r#"{"kind":"uniform","low":5,"high":1}"#, "uniform low"),
        (r#"{"kind":"gaussian","mean":0,"std":-1}"#, "gaussian std"),
        (
            r#"{"kind":"random_walk","start":0,"step":1,"low":2,"high":1}"#,
            "random_walk low",
        ),
        (
            r#"{"kind":"random_walk","start":9,"step":1,"low":0,"high":1}"#,
            "random_walk start",
        ),
        (
            r#"{"kind":"sine","mean":0,"amplitude":1,"period":0}"#,
            "sine period",
        ),
        (r#"{"kind":"steps","values":[],"every":1}"#, "steps values"),
        (r#"{"kind":"steps","values":[1],"every":-1}"#, "steps every"),
        (
            r#"{"kind":"step_change","start":0,"size":1,"rate":2}"#,
            "step_change rate",
        ),
        (r#"{"kind":"choice","values":[]}"#, "choice values"),
        (
            r#"{"kind":"choice","values":[1,2],"weights":[1]}"#,
            "weights",
        ),
        (
            r#"{"kind":"choice","values":[1,2],"weights":[0,0]}"#,
            "weights",
        ),
        (
            r#"{"kind":"choice","values":[1,2],"weights":[1,-1]}"#,
            "choice weight",
        ),
        (
            r#"{"kind":"values","values":[]}"#,
            "values must not be empty",
        ),
        (r#"{"kind":"sum","parts":[]}"#, "sum parts"),
        (
            r#"{"kind":"sum","parts":[{"kind":"constant","value":"x"}]}"#,
            "sum part 0",
        ),
        (
            r#"{"kind":"sum","parts":[{"kind":"counter"},{"kind":"gaussian","mean":0,"std":-2}]}"#,
            "sum part 1: gaussian std",
        ),
    ] {
        let message = field(generator);
        assert!(message.contains("\"temp\""), "{generator}: {message}");
        assert!(message.contains(expected), "{generator}: {message}");
    }

    for (json, expected) in [
        (r#"{"interval":-1,"count":1}"#, "interval"),
        (r#"{"interval":1}"#, "duration and/or count"),
        (
            r#"{"interval":0,"duration":5}"#,
            "duration needs interval > 0",
        ),
        (r#"{"interval":1,"count":1,"jitter":1.5}"#, "jitter"),
        (r#"{"interval":1,"count":1,"time_scale":0}"#, "time_scale"),
        (
            r#"{"interval":1,"count":1,"dropout_rate":-0.1}"#,
            "dropout_rate",
        ),
        (
            r#"{"interval":1,"count":1,"duplicate_rate":1.1}"#,
            "duplicate_rate",
        ),
        (
            r#"{"interval":1,"count":1,"start_unix_ms":999999999999999}"#,
            "start_unix_ms",
        ),
        (r#"{"interval":1,"count":1,"bogus":1}"#, "bogus"),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"x","generator":{"kind":"nope"}}]}"#,
            "nope",
        ),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"x","generator":{"kind":"counter","stpe":1}}]}"#,
            "stpe",
        ),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"ts","generator":{"kind":"counter"}}]}"#,
            "reserved",
        ),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"}},
               {"name":"a","generator":{"kind":"counter"}}]}"#,
            "fields[1] \"a\": duplicate",
        ),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"},
               "anomaly_rate":3}]}"#,
            "\"a\": anomaly_rate",
        ),
        (
            r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"},
               "anomaly_scale":-3}]}"#,
            "\"a\": anomaly_scale",
        ),
    ] {
        let message = config_error(json);
        assert!(message.contains(expected), "{json}: {message}");
    }

    // Rust-built plans are checked too, including numbers JSON cannot carry.
    let mut p = plan(
        r#"{"interval":1,"count":1,"fields":[{"name":"u","generator":{"kind":"uniform","low":0,"high":1}}]}"#,
    );
    p.fields[0].generator = Generator::Uniform {
        low: f64::NAN,
        high: 1.0,
    };
    assert!(
        matches!(p.validate(), Err(Error::Config(m)) if m.to_string().contains("\"u\"") && m.to_string().contains("low"))
    );
    // Null means "default" where a default exists.
    let defaults = plan(r#"{"interval":null,"seed":null,"jitter":null,"count":2,"fields":null}"#);
    assert_eq!((defaults.interval, defaults.seed), (1.0, 0));
}

#[test]
fn custom_names_are_checked_and_values_cycled() {
    let p = one_field(r#"{"kind":"counter"}"#, 5);
    assert!(p.check_custom_names(["a", "b"]).is_ok());
    for bad in [["x", "a"], ["a", "a"], ["seq", "a"], ["", "a"]] {
        assert!(p.check_custom_names(bad).is_err(), "{bad:?}");
    }
    let custom = vec![(
        "c".to_string(),
        vec![Value::from(1), Value::from("two"), Value::Null],
    )];
    let got: Vec<Value> = p
        .device_stream(0, "d", custom)
        .map(|m| serde_json::from_slice::<Value>(&m.body).unwrap()["c"].clone())
        .collect();
    assert_eq!(
        got,
        serde_json::json!([1, "two", null, 1, "two"])
            .as_array()
            .unwrap()
            .clone()
    );
}

#[test]
fn stream_is_send_and_static_and_survives_the_plan() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let p = one_field(r#"{"kind":"values","values":[1,2]}"#, 2);
    let stream = p.device_stream(0, "d", Vec::new());
    drop(p);
    assert_send(&stream);
    assert_eq!(stream.count(), 2);
}
