//! The emulator's integration suite, by topic, over real TLS and MQTT on 127.0.0.1 with a
//! rumqttc client as the peer: [`dps`] (registration, attestation, allocation), [`hub`]
//! (telemetry, twins, methods, C2D, sessions), [`c2d`] (a C2D message's life cycle and its
//! feedback), [`knobs`] (knobs and tier presets), [`restarts`]
//! (durability across restarts and SIGKILL) and [`listener`] (garbage and fuzzed packets), with
//! the helpers they and the emulator's other test files share in [`support`]. The tests that
//! drive dpskit's own clients against the emulator live in `crate::interop_tests`.

mod c2d;
mod dps;
mod hub;
mod issuance;
mod knobs;
mod listener;
mod restarts;
pub(crate) mod support;
