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
/// Largest direct-method payload, the request and the device's response alike (IoT Hub
/// quotas and throttling: "Direct method payload size: 128 KB").
pub const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// Largest desired or reported properties section of a twin, each counted as its JSON text
/// (device twins, "Device twin size"). Azure refuses an operation that would grow a section
/// past it: `403100`, "'Properties.Reported' size should be less than 32768 bytes." (as an
/// IoT Edge user recorded IoT Hub's answer, Azure/iotedge#7035).
pub const MAX_TWIN_SECTION_BYTES: usize = 32 * 1024;
/// IoT Hub's error code for a twin section grown past [`MAX_TWIN_SECTION_BYTES`] (status 403).
pub const TWIN_TOO_LARGE_ERROR_CODE: u32 = 403_100;
/// Largest cloud-to-device message (IoT Hub quotas and throttling).
pub const MAX_C2D_MESSAGE_BYTES: usize = 64 * 1024;

// ---- IoT Hub tiers ("quota presets") --------------------------------------------------------
//
// IoT Hub quotas and throttling (learn.microsoft.com, `iot-hub-devguide-quotas-throttling`,
// read 2026-12-07; the table there was last revised in 2024) and the IoT Hub pricing page for
// the daily message quotas. Every per-tier number the emulator enforces is in `HUB_TIERS`.

/// An IoT Hub pricing tier, the ARM `sku.name` of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HubTier {
    /// Free: one unit, 8,000 messages of 0.5 KB a day.
    F1,
    /// Basic, size 1.
    B1,
    /// Basic, size 2.
    B2,
    /// Basic, size 3.
    B3,
    /// Standard, size 1 (what ARM shows for a hub created without a choice).
    S1,
    /// Standard, size 2.
    S2,
    /// Standard, size 3.
    S3,
}

/// A throttle of IoT Hub: the higher of `floor` per second for the hub or `per_unit` per
/// second for each unit ("the higher of 100/sec or 12/sec/unit").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubRate {
    /// Per second for the whole hub, whatever its units.
    pub floor: f64,
    /// Per second for each unit.
    pub per_unit: f64,
}

impl HubRate {
    const fn per_unit(per_unit: f64) -> Self {
        HubRate {
            floor: 0.0,
            per_unit,
        }
    }

    const fn higher_of(floor: f64, per_unit: f64) -> Self {
        HubRate { floor, per_unit }
    }

    /// Operations per second allowed for a hub of `units` units.
    pub fn per_second(&self, units: u32) -> f64 {
        self.floor.max(self.per_unit * f64::from(units))
    }
}

/// What one tier allows. `None`: the tier has no such operation (Basic tiers have no twins,
/// direct methods nor cloud-to-device messages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubTierLimits {
    /// The tier.
    pub tier: HubTier,
    /// ARM `sku.tier`: `Free`, `Basic` or `Standard`.
    pub arm_tier: &'static str,
    /// Most units a hub of this tier can have.
    pub max_units: u32,
    /// New device connections (the rate of new ones, not how many are open).
    pub connections: HubRate,
    /// Device-to-cloud send operations.
    pub d2c_sends: HubRate,
    /// Device and module twin reads.
    pub twin_reads: Option<HubRate>,
    /// Device and module twin updates.
    pub twin_updates: Option<HubRate>,
    /// Direct method calls.
    pub direct_methods: Option<HubRate>,
    /// Cloud-to-device sends.
    pub c2d_sends: Option<HubRate>,
    /// Identity registry operations (create, retrieve, list, update, delete).
    pub registry_operations: HubRate,
    /// Messages a unit may send in a UTC day, each counted in `meter_block_bytes` blocks.
    pub messages_per_unit_per_day: u64,
    /// The size a message is metered in: a 9 KB message is three 4 KB messages.
    pub meter_block_bytes: usize,
}

/// "100/min/unit", as the table writes the slow throttles.
const PER_MINUTE_100: f64 = 100.0 / 60.0;
/// "5,000/min/unit".
const PER_MINUTE_5000: f64 = 5000.0 / 60.0;

/// Azure's table, one row per tier (see the header of this section for its date).
pub const HUB_TIERS: [HubTierLimits; 7] = [
    HubTierLimits {
        tier: HubTier::F1,
        arm_tier: "Free",
        max_units: 1,
        connections: HubRate::higher_of(100.0, 12.0),
        d2c_sends: HubRate::higher_of(100.0, 12.0),
        twin_reads: Some(HubRate::higher_of(100.0, 0.0)),
        twin_updates: Some(HubRate::higher_of(50.0, 0.0)),
        direct_methods: Some(HubRate::per_unit(20.0)),
        c2d_sends: Some(HubRate::per_unit(PER_MINUTE_100)),
        registry_operations: HubRate::per_unit(PER_MINUTE_100),
        messages_per_unit_per_day: 8_000,
        meter_block_bytes: 512,
    },
    HubTierLimits {
        tier: HubTier::B1,
        arm_tier: "Basic",
        max_units: 200,
        connections: HubRate::higher_of(100.0, 12.0),
        d2c_sends: HubRate::higher_of(100.0, 12.0),
        twin_reads: None,
        twin_updates: None,
        direct_methods: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit(PER_MINUTE_100),
        messages_per_unit_per_day: 400_000,
        meter_block_bytes: 4096,
    },
    HubTierLimits {
        tier: HubTier::B2,
        arm_tier: "Basic",
        max_units: 200,
        connections: HubRate::per_unit(120.0),
        d2c_sends: HubRate::per_unit(120.0),
        twin_reads: None,
        twin_updates: None,
        direct_methods: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit(PER_MINUTE_100),
        messages_per_unit_per_day: 6_000_000,
        meter_block_bytes: 4096,
    },
    HubTierLimits {
        tier: HubTier::B3,
        arm_tier: "Basic",
        max_units: 10,
        connections: HubRate::per_unit(6000.0),
        d2c_sends: HubRate::per_unit(6000.0),
        twin_reads: None,
        twin_updates: None,
        direct_methods: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit(PER_MINUTE_5000),
        messages_per_unit_per_day: 300_000_000,
        meter_block_bytes: 4096,
    },
    HubTierLimits {
        tier: HubTier::S1,
        arm_tier: "Standard",
        max_units: 200,
        connections: HubRate::higher_of(100.0, 12.0),
        d2c_sends: HubRate::higher_of(100.0, 12.0),
        twin_reads: Some(HubRate::higher_of(100.0, 0.0)),
        twin_updates: Some(HubRate::higher_of(50.0, 0.0)),
        direct_methods: Some(HubRate::per_unit(20.0)),
        c2d_sends: Some(HubRate::per_unit(PER_MINUTE_100)),
        registry_operations: HubRate::per_unit(PER_MINUTE_100),
        messages_per_unit_per_day: 400_000,
        meter_block_bytes: 4096,
    },
    HubTierLimits {
        tier: HubTier::S2,
        arm_tier: "Standard",
        max_units: 200,
        connections: HubRate::per_unit(120.0),
        d2c_sends: HubRate::per_unit(120.0),
        twin_reads: Some(HubRate::higher_of(100.0, 10.0)),
        twin_updates: Some(HubRate::higher_of(50.0, 5.0)),
        direct_methods: Some(HubRate::per_unit(60.0)),
        c2d_sends: Some(HubRate::per_unit(PER_MINUTE_100)),
        registry_operations: HubRate::per_unit(PER_MINUTE_100),
        messages_per_unit_per_day: 6_000_000,
        meter_block_bytes: 4096,
    },
    HubTierLimits {
        tier: HubTier::S3,
        arm_tier: "Standard",
        max_units: 10,
        connections: HubRate::per_unit(6000.0),
        d2c_sends: HubRate::per_unit(6000.0),
        twin_reads: Some(HubRate::per_unit(500.0)),
        twin_updates: Some(HubRate::per_unit(250.0)),
        direct_methods: Some(HubRate::per_unit(3000.0)),
        c2d_sends: Some(HubRate::per_unit(PER_MINUTE_5000)),
        registry_operations: HubRate::per_unit(PER_MINUTE_5000),
        messages_per_unit_per_day: 300_000_000,
        meter_block_bytes: 4096,
    },
];

/// The hub resource tag with which dpskit asks the emulator to enforce the hub's tier (its
/// throttles and daily quota, off by default); inert on Azure, which always enforces them.
pub const HUB_PRESETS_TAG: &str = "dpskit-presets";

/// IoT Hub's error code once the daily message quota is spent (status 403).
pub const QUOTA_EXCEEDED_ERROR_CODE: u32 = 403_002;

impl HubTier {
    /// The tier named as ARM names it (`S1`, case-insensitive); `None` for any other name.
    pub fn parse(name: &str) -> Option<HubTier> {
        HUB_TIERS
            .iter()
            .map(|l| l.tier)
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The ARM `sku.name`.
    pub fn name(self) -> &'static str {
        match self {
            HubTier::F1 => "F1",
            HubTier::B1 => "B1",
            HubTier::B2 => "B2",
            HubTier::B3 => "B3",
            HubTier::S1 => "S1",
            HubTier::S2 => "S2",
            HubTier::S3 => "S3",
        }
    }

    /// The tier's row of [`HUB_TIERS`].
    pub fn limits(self) -> &'static HubTierLimits {
        // Every tier has its row (checked by a test).
        HUB_TIERS
            .iter()
            .find(|l| l.tier == self)
            .unwrap_or(&HUB_TIERS[4])
    }
}

/// A hub's tier and units: its ARM `sku` (`name`, `capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HubSku {
    /// The tier.
    pub tier: HubTier,
    /// Units (ARM `capacity`).
    pub units: u32,
}

impl HubSku {
    /// A tier and size, checked against the tier's unit range as ARM checks it.
    pub fn new(tier: &str, units: u32) -> Result<HubSku, String> {
        let Some(tier) = HubTier::parse(tier) else {
            return Err(format!(
                "unknown IoT Hub SKU {tier:?}: one of F1, B1, B2, B3, S1, S2, S3"
            ));
        };
        let max = tier.limits().max_units;
        if units == 0 || units > max {
            return Err(format!(
                "{} hubs have 1 to {max} units, not {units}",
                tier.name()
            ));
        }
        Ok(HubSku { tier, units })
    }

    /// Messages (of [`HubTierLimits::meter_block_bytes`]) the hub may take in a UTC day.
    pub fn daily_messages(&self) -> u64 {
        self.tier.limits().messages_per_unit_per_day * u64::from(self.units)
    }

    /// How many messages a message of `size` bytes counts as against the daily quota.
    pub fn metered_messages(&self, size: usize) -> u64 {
        let block = self.tier.limits().meter_block_bytes;
        size.div_ceil(block).max(1) as u64
    }
}

#[cfg(test)]
mod tier_tests {
    use super::*;

    #[test]
    fn every_tier_has_its_row_and_round_trips_its_name() {
        for row in &HUB_TIERS {
            assert_eq!(row.tier.limits(), row);
            assert_eq!(
                HubTier::parse(&row.tier.name().to_lowercase()),
                Some(row.tier)
            );
        }
        assert_eq!(HubTier::parse("S4"), None);
    }

    #[test]
    fn rates_and_quotas_follow_the_documented_examples() {
        // "two units of S1 are 2*12 = 24 new connections/sec, but you have at least 100".
        let s1 = HubTier::S1.limits();
        assert_eq!(s1.connections.per_second(2), 100.0);
        assert_eq!(s1.connections.per_second(9), 108.0);
        assert_eq!(HubTier::S3.limits().d2c_sends.per_second(2), 12_000.0);
        let free = HubSku::new("F1", 1).unwrap();
        assert_eq!(free.daily_messages(), 8_000);
        assert_eq!(free.metered_messages(0), 1);
        assert_eq!(free.metered_messages(512), 1);
        assert_eq!(free.metered_messages(513), 2);
        let s2 = HubSku::new("s2", 3).unwrap();
        assert_eq!(s2.daily_messages(), 18_000_000);
        assert_eq!(s2.metered_messages(9 * 1024), 3);
        assert!(HubSku::new("F1", 2).is_err());
        assert!(HubSku::new("S3", 11).is_err());
        assert!(HubSku::new("S1", 0).is_err());
        assert!(HubSku::new("P1", 1).is_err());
    }
}
