//! What a fleet would need of Azure, from what it did on the emulator: the time one DPS takes
//! to register it at Azure's rates, and the fewest units of each hub tier that carry its
//! message rate, daily volume and connections. The fleet report shows these; the rules are
//! the tables of [`super::tiers`], read here and nowhere else.

use super::tiers::{DPS_RATES, HUB_TIERS, HubTier};

/// What one hub carries in a fleet: measured on the emulator, in Azure's time (a run with time
/// compression divides its rates by the compression first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubDemand {
    /// Devices assigned to the hub.
    pub devices: u64,
    /// Device-to-cloud sends per second, sustained.
    pub d2c_per_second: f64,
    /// Mean size of a message (body and properties), which decides how many blocks it meters.
    pub mean_message_bytes: f64,
    /// Whether the fleet uses twins, direct methods or cloud-to-device messages, which Basic
    /// tiers lack.
    pub needs_standard: bool,
    /// How long the fleet may take to connect every device (the connection throttle's bound).
    pub connect_within_seconds: f64,
}

impl HubDemand {
    /// Refuses a demand no fleet has (negative, not a number, or nothing to connect within):
    /// the fits of such a demand would be meaningless rather than wrong-looking.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("d2c_per_second", self.d2c_per_second),
            ("mean_message_bytes", self.mean_message_bytes),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!(
                    "{name} must be a finite number, 0 or more, not {value}"
                ));
            }
        }
        let within = self.connect_within_seconds;
        if !(within.is_finite() && within > 0.0) {
            return Err(format!(
                "connect_within_seconds must be a positive number, not {within}"
            ));
        }
        Ok(())
    }
}

/// The fewest units of one tier that carry a demand, or why none do.
#[derive(Debug, Clone, PartialEq)]
pub struct TierFit {
    /// The tier.
    pub tier: HubTier,
    /// The fewest units, or `None` when even the tier's most units cannot.
    pub units: Option<u32>,
    /// The limit that decides the units: `daily quota`, `d2c sends`, `connections`, `none`
    /// (one unit is enough), or why the tier cannot (`no twins, methods or C2D`, `past its N
    /// units (...)`).
    pub limited_by: String,
    /// Messages a day the demand meters in this tier's blocks.
    pub metered_messages_per_day: f64,
}

/// Seconds one DPS instance takes at Azure's registration rate to register `devices`.
pub fn dps_onboarding_seconds(devices: u64) -> f64 {
    devices as f64 * 60.0 / f64::from(DPS_RATES.registrations_per_minute)
}

/// Messages a day `demand` meters on `tier` (a message counts once per started block).
pub fn metered_messages_per_day(tier: HubTier, demand: &HubDemand) -> f64 {
    let block = tier.limits().meter_block_bytes as f64;
    let blocks_per_message = (demand.mean_message_bytes / block).ceil().max(1.0);
    demand.d2c_per_second * 86_400.0 * blocks_per_message
}

/// The fewest units of `tier` that carry `demand`.
pub fn fit(tier: HubTier, demand: &HubDemand) -> TierFit {
    let limits = tier.limits();
    let metered = metered_messages_per_day(tier, demand);
    let fit = |units: Option<u32>, limited_by: String| TierFit {
        tier,
        units,
        limited_by,
        metered_messages_per_day: metered,
    };
    if demand.needs_standard && limits.twin_reads.is_none() {
        return fit(None, "no twins, methods or C2D".into());
    }
    let connections_per_second = demand.devices as f64 / demand.connect_within_seconds.max(1.0);
    // Each need gives the units it alone takes; the largest decides.
    let needs = [
        (
            "daily quota",
            (metered / limits.messages_per_unit_per_day as f64).ceil(),
        ),
        (
            "d2c sends",
            units_for(limits.d2c_sends, demand.d2c_per_second),
        ),
        (
            "connections",
            units_for(limits.connections, connections_per_second),
        ),
    ];
    let (limited_by, units) = needs.iter().fold(("none", 1.0_f64), |best, &(why, units)| {
        if units > best.1 { (why, units) } else { best }
    });
    if !units.is_finite() || units > f64::from(limits.max_units) {
        return fit(
            None,
            format!(
                "past its {} unit{} ({limited_by})",
                limits.max_units,
                if limits.max_units == 1 { "" } else { "s" }
            ),
        );
    }
    fit(Some(units as u32), limited_by.into())
}

/// The fewest units at which `rate` allows `per_second`: infinite when no count does.
fn units_for(rate: super::tiers::HubRate, per_second: f64) -> f64 {
    if per_second <= rate.floor {
        return 1.0;
    }
    if rate.per_unit <= 0.0 {
        return f64::INFINITY;
    }
    (per_second / rate.per_unit).ceil().max(1.0)
}

/// [`fit`] for every tier, in the table's order.
pub fn fits(demand: &HubDemand) -> Vec<TierFit> {
    HUB_TIERS.iter().map(|row| fit(row.tier, demand)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(devices: u64, d2c_per_second: f64, bytes: f64) -> HubDemand {
        HubDemand {
            devices,
            d2c_per_second,
            mean_message_bytes: bytes,
            needs_standard: true,
            connect_within_seconds: 3600.0,
        }
    }

    #[test]
    fn a_demand_no_fleet_has_is_refused() {
        assert!(demand(10, 1.0, 100.0).check().is_ok());
        assert!(demand(10, -1.0, 100.0).check().is_err());
        assert!(demand(10, 1.0, f64::NAN).check().is_err());
        let mut d = demand(10, 1.0, 100.0);
        d.connect_within_seconds = 0.0;
        assert!(d.check().unwrap_err().contains("connect_within_seconds"));
    }

    #[test]
    fn dps_registers_a_thousand_devices_a_minute() {
        assert_eq!(dps_onboarding_seconds(10_000), 600.0);
    }

    #[test]
    fn a_small_fleet_fits_one_unit_of_every_standard_tier() {
        // 100 devices, one 1 KB message a minute each: 144,000 messages a day.
        let fits = fits(&demand(100, 100.0 / 60.0, 1024.0));
        let s1 = fits.iter().find(|f| f.tier == HubTier::S1).unwrap();
        assert_eq!((s1.units, s1.limited_by.as_str()), (Some(1), "none"));
        // F1 meters 1 KB as two 0.5 KB messages: 288,000 a day, past its 8,000.
        let f1 = fits.iter().find(|f| f.tier == HubTier::F1).unwrap();
        assert_eq!(f1.metered_messages_per_day, 288_000.0);
        assert_eq!(f1.units, None);
        assert!(f1.limited_by.contains("daily quota"), "{f1:?}");
        let b1 = fits.iter().find(|f| f.tier == HubTier::B1).unwrap();
        assert_eq!(b1.units, None);
    }

    #[test]
    fn the_daily_quota_and_the_send_rate_decide_the_units() {
        // 10 KB messages meter three 4 KB blocks: 50 sends/s are 12.96 M a day, 33 S1 units
        // (400 k each); S2 needs 3 (6 M each); S3 one.
        let d = demand(5_000, 50.0, 10.0 * 1024.0);
        let units = |tier| fit(tier, &d).units;
        assert_eq!(units(HubTier::S1), Some(33));
        assert_eq!(fit(HubTier::S1, &d).limited_by, "daily quota");
        assert_eq!(units(HubTier::S2), Some(3));
        assert_eq!(units(HubTier::S3), Some(1));
        // 1,500 sends/s of small messages: S1's 12/s/unit needs 125 units, which also meter
        // 129.6 M a day (324 units of 400 k): past S1's 200 units.
        let fast = demand(5_000, 1500.0, 200.0);
        assert_eq!(fit(HubTier::S1, &fast).units, None);
        assert_eq!(fit(HubTier::S2, &fast).units, Some(22));
        assert_eq!(fit(HubTier::S2, &fast).limited_by, "daily quota");
        assert_eq!(fit(HubTier::S3, &fast).units, Some(1));
    }

    #[test]
    fn connecting_many_devices_quickly_takes_units() {
        // 100,000 devices within 10 minutes: 167/s, past S1's floor of 100/s: 14 units of 12/s.
        let mut d = demand(100_000, 1.0, 100.0);
        d.connect_within_seconds = 600.0;
        let s1 = fit(HubTier::S1, &d);
        assert_eq!(
            (s1.units, s1.limited_by.as_str()),
            (Some(14), "connections")
        );
        assert_eq!(fit(HubTier::S2, &d).units, Some(2));
    }
}
