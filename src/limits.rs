//! Azure's documented limits that both sides of the wire enforce: dpskit's clients refuse to
//! send past them (with a clear error instead of Azure's refusal), and the emulator refuses
//! what Azure refuses. Each number is written here once; the modules name it in their terms.

/// Largest device-to-cloud message: body and properties (IoT Hub quotas and throttling).
pub const MAX_D2C_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest MQTT keep-alive IoT Hub serves; it disconnects a device silent for 1.5 times the
/// keep-alive, at most 1,767 s (IoT Hub MQTT support).
pub const MAX_KEEP_ALIVE_SECONDS: u16 = 1177;
/// Shortest direct-method response timeout (`responseTimeoutInSeconds`); shorter is raised.
pub const MIN_METHOD_RESPONSE_TIMEOUT_SECONDS: u64 = 5;
/// Longest direct-method response timeout; Azure answers 400 past it.
pub const MAX_METHOD_RESPONSE_TIMEOUT_SECONDS: u64 = 300;
/// Largest DPS registration message (DPS quotas and limits).
pub const MAX_DPS_MESSAGE_BYTES: usize = 96 * 1024;
