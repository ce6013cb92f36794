//! The rates and quotas of IoT Hub's tiers and of DPS, as one table each: what the emulator
//! enforces once a hub or DPS asks for its presets, and what a fleet's Azure estimate reads.
//!
//! Source: "IoT Hub quotas and throttling" (learn.microsoft.com,
//! `articles/iot-hub/iot-hub-devguide-quotas-throttling.md`, `ms.date: 02/09/2023`, read
//! 2026-12-07) for the throttles, the meter block sizes and the tiers' unit ranges; the IoT Hub
//! pricing page for the daily quotas (400,000 / 6,000,000 / 300,000,000 messages per unit,
//! 8,000 on F1); "DPS quotas and limits" (`includes/iot-dps-limits.md`, `ms.date: 03/06/2024`)
//! for [`DPS_RATES`].

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
/// second for each unit ("the higher of 100/sec or 12/sec/unit"), counted over `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubRate {
    /// Per second for the whole hub, whatever its units.
    pub floor: f64,
    /// Per second for each unit.
    pub per_unit: f64,
    /// How long a burst may run before the throttle bites: Azure applies its throttles "in
    /// minute ranges", so a row the table writes per minute (100/min/unit) allows its minute's
    /// worth at once, and a row written per second its second's worth.
    pub window: std::time::Duration,
}

impl HubRate {
    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
    const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

    const fn per_unit(per_unit: f64) -> Self {
        HubRate {
            floor: 0.0,
            per_unit,
            window: Self::SECOND,
        }
    }

    const fn higher_of(floor: f64, per_unit: f64) -> Self {
        HubRate {
            floor,
            per_unit,
            window: Self::SECOND,
        }
    }

    /// "N/min/unit", as the table writes the slow throttles.
    const fn per_unit_per_minute(per_minute: f64) -> Self {
        HubRate {
            floor: 0.0,
            per_unit: per_minute / 60.0,
            window: Self::MINUTE,
        }
    }

    /// Whole operations the throttle lets through at once for a hub of `units` units.
    pub fn burst(&self, units: u32) -> f64 {
        (self.per_second(units) * self.window.as_secs_f64())
            .round()
            .max(1.0)
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
    /// Device and module twin reads (the device's GET and the service's).
    pub twin_reads: Option<HubRate>,
    /// Device and module twin updates (reported patches, desired and tag updates).
    pub twin_updates: Option<HubRate>,
    /// Direct methods, in [`DIRECT_METHOD_METER_BYTES`] blocks of request payload per second
    /// ("160KB/sec/unit", "throttling meter size is 4 KB").
    pub direct_method_blocks: Option<HubRate>,
    /// Cloud-to-device sends.
    pub c2d_sends: Option<HubRate>,
    /// Identity registry operations (create, retrieve, list, update, delete).
    pub registry_operations: HubRate,
    /// IoT Hub queries.
    pub queries: HubRate,
    /// Messages a unit may send in a UTC day, each counted in `meter_block_bytes` blocks.
    pub messages_per_unit_per_day: u64,
    /// The size a message is metered in: a 9 KB message is three 4 KB messages.
    pub meter_block_bytes: usize,
}

/// The block a direct method's request payload is metered in: 0 to 4 KB counts as 4 KB.
pub(crate) const DIRECT_METHOD_METER_BYTES: usize = 4096;

/// "160KB/sec/unit" etc. in 4 KB blocks.
const fn kb_per_second(kb: f64) -> HubRate {
    HubRate::per_unit(kb / 4.0)
}

/// Azure's table, one row per tier (see the header of this section for its date).
pub(crate) const HUB_TIERS: [HubTierLimits; 7] = [
    HubTierLimits {
        tier: HubTier::F1,
        arm_tier: "Free",
        max_units: 1,
        connections: HubRate::higher_of(100.0, 12.0),
        d2c_sends: HubRate::higher_of(100.0, 12.0),
        twin_reads: Some(HubRate::higher_of(100.0, 0.0)),
        twin_updates: Some(HubRate::higher_of(50.0, 0.0)),
        direct_method_blocks: Some(kb_per_second(160.0)),
        c2d_sends: Some(HubRate::per_unit_per_minute(100.0)),
        registry_operations: HubRate::per_unit_per_minute(100.0),
        queries: HubRate::per_unit_per_minute(20.0),
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
        direct_method_blocks: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit_per_minute(100.0),
        queries: HubRate::per_unit_per_minute(20.0),
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
        direct_method_blocks: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit_per_minute(100.0),
        queries: HubRate::per_unit_per_minute(20.0),
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
        direct_method_blocks: None,
        c2d_sends: None,
        registry_operations: HubRate::per_unit_per_minute(5000.0),
        queries: HubRate::per_unit_per_minute(1000.0),
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
        direct_method_blocks: Some(kb_per_second(160.0)),
        c2d_sends: Some(HubRate::per_unit_per_minute(100.0)),
        registry_operations: HubRate::per_unit_per_minute(100.0),
        queries: HubRate::per_unit_per_minute(20.0),
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
        direct_method_blocks: Some(kb_per_second(480.0)),
        c2d_sends: Some(HubRate::per_unit_per_minute(100.0)),
        registry_operations: HubRate::per_unit_per_minute(100.0),
        queries: HubRate::per_unit_per_minute(20.0),
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
        direct_method_blocks: Some(kb_per_second(24.0 * 1024.0)),
        c2d_sends: Some(HubRate::per_unit_per_minute(5000.0)),
        registry_operations: HubRate::per_unit_per_minute(5000.0),
        queries: HubRate::per_unit_per_minute(1000.0),
        messages_per_unit_per_day: 300_000_000,
        meter_block_bytes: 4096,
    },
];

/// The resource tag with which dpskit asks the emulator to enforce a hub's tier (its
/// throttles and daily quota) or a DPS's rates, off by default; inert on Azure, which always
/// enforces them.
pub(crate) const PRESETS_TAG: &str = "dpskit-presets";

/// IoT Hub's error code once the daily message quota is spent (status 403).
pub(crate) const QUOTA_EXCEEDED_ERROR_CODE: u32 = 403_002;

/// The error code of a throttled operation (status 429, `ThrottlingException`), IoT Hub's and
/// (unverified, see the wire-protocol notes) DPS's.
pub(crate) const THROTTLED_ERROR_CODE: u32 = 429_001;

/// An operation IoT Hub throttles, named as the table's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubOperation {
    /// A new device connection.
    Connection,
    /// A device-to-cloud send.
    D2cSend,
    /// A twin read, by the device or the service.
    TwinRead,
    /// A twin update, by the device (reported) or the service (desired, tags).
    TwinUpdate,
    /// A direct method call, counted in [`DIRECT_METHOD_METER_BYTES`] blocks.
    DirectMethod,
    /// A cloud-to-device send.
    C2dSend,
    /// An identity registry operation.
    Registry,
    /// A query.
    Query,
}

impl HubOperation {
    /// Every throttled operation.
    pub const ALL: [HubOperation; 8] = [
        HubOperation::Connection,
        HubOperation::D2cSend,
        HubOperation::TwinRead,
        HubOperation::TwinUpdate,
        HubOperation::DirectMethod,
        HubOperation::C2dSend,
        HubOperation::Registry,
        HubOperation::Query,
    ];

    /// The name `usage()` reports the operation's refusals under.
    pub fn name(self) -> &'static str {
        match self {
            HubOperation::Connection => "connections",
            HubOperation::D2cSend => "d2c_sends",
            HubOperation::TwinRead => "twin_reads",
            HubOperation::TwinUpdate => "twin_updates",
            HubOperation::DirectMethod => "direct_methods",
            HubOperation::C2dSend => "c2d_sends",
            HubOperation::Registry => "registry_operations",
            HubOperation::Query => "queries",
        }
    }

    /// The tier's throttle of this operation; `None` where the tier lacks the feature.
    pub fn rate(self, limits: &HubTierLimits) -> Option<HubRate> {
        match self {
            HubOperation::Connection => Some(limits.connections),
            HubOperation::D2cSend => Some(limits.d2c_sends),
            HubOperation::TwinRead => limits.twin_reads,
            HubOperation::TwinUpdate => limits.twin_updates,
            HubOperation::DirectMethod => limits.direct_method_blocks,
            HubOperation::C2dSend => limits.c2d_sends,
            HubOperation::Registry => Some(limits.registry_operations),
            HubOperation::Query => Some(limits.queries),
        }
    }
}

/// The rates of a DPS instance, whatever its units (DPS has one tier, S1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DpsRates {
    /// Device registrations (register requests) per minute for the instance.
    pub registrations_per_minute: u32,
    /// Service operations (enrollments, registrations, certificates) per minute.
    pub operations_per_minute: u32,
    /// Operation status polls a device may make per `poll_window`.
    pub polls_per_device: u32,
    /// The window `polls_per_device` counts over.
    pub poll_window: std::time::Duration,
}

/// "Operations 1,000/min/service; device registrations 1,000/min/service; device polling
/// operation 5/10 sec/device".
pub(crate) const DPS_RATES: DpsRates = DpsRates {
    registrations_per_minute: 1000,
    operations_per_minute: 1000,
    polls_per_device: 5,
    poll_window: std::time::Duration::from_secs(10),
};

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
mod tests {
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

    #[test]
    fn slow_throttles_allow_their_minute_and_methods_count_four_kb_blocks() {
        // "100/min/unit": two units take 200 registry operations in a burst.
        let s1 = HubTier::S1.limits();
        assert_eq!(s1.registry_operations.burst(2), 200.0);
        assert_eq!(s1.connections.burst(1), 100.0);
        // "You can make up to 40 calls per second per unit before hitting 160 KB/sec/unit."
        let methods = HubOperation::DirectMethod.rate(s1).unwrap();
        assert_eq!(methods.per_second(1), 40.0);
        assert_eq!(
            HubOperation::Query
                .rate(HubTier::S3.limits())
                .unwrap()
                .burst(1),
            1000.0
        );
        assert_eq!(HubOperation::TwinRead.rate(HubTier::B1.limits()), None);
    }
}
