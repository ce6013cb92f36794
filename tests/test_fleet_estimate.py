"""The fleet report's Azure estimate, from runs on the real emulator: the DPS onboarding time,
the units of every hub tier for a known telemetry plan and message size (worked out by hand
below), the frame and the summary section, and the refusals a tier preset produced."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

import dpskit
from conftest import quota_refusals, sas_device
from dpskit._native import DPS_REGISTRATIONS_PER_MINUTE

pd = pytest.importorskip("pandas")

#: 520 characters: every message is over F1's 0.5 KB block and under the 4 KB of paid tiers.
BLOB = "x" * 520


def blob(device_id: str, count: int, rng: random.Random) -> list[str]:
    return [BLOB]


class Setup:
    """A local cloud with one DPS, an X.509 group and hubs made on demand."""

    def __init__(self, cloud: dpskit.LocalCloud, ca: Any) -> None:
        self.cloud = cloud
        self.dps = cloud.create_dps("estimate-dps")
        self.authority = ca.intermediate
        self.dps.prove_possession("issuing", ca.intermediate)

    def hub(self, name: str, **sku: Any) -> dpskit.Hub:
        hub = self.cloud.create_hub(name, **sku)
        self.cloud.link_hub(self.dps, hub)
        self.dps.create_enrollment_group(
            f"{name}-group", ca_reference="issuing", allocation_policy="hashed", hubs=[hub]
        )
        return hub


@pytest.fixture
def setup(dpskit_ca: Any) -> Iterator[Setup]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        yield Setup(cloud, dpskit_ca)


def counted_bytes(message: dpskit.TelemetryMessage) -> int:
    """What IoT Hub counts of a stored message: body, property names and values."""
    pairs = [*message.properties.items(), *message.system_properties.items()]
    return len(message.body) + sum(len(k) + len(v) for k, v in pairs)


def test_the_estimate_of_a_known_fleet_gives_the_units_of_every_tier(setup: Setup) -> None:
    hub = setup.hub("estimate-hub")
    # 10 devices, one message every 0.4 s, 11 each without jitter: 10 intervals in 4 s, so
    # 2.5 messages/s a device and 25/s for the hub.
    plan = dpskit.TelemetryPlan(interval=0.4, count=11, jitter=0.0, fields={"blob": blob})
    fleet = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=10, prefix="known-", telemetry=plan
    )
    report = fleet.run(progress=False)
    assert report.outcomes == {"completed": 10}, report.summary()

    estimate = report.azure_estimate()
    assert DPS_REGISTRATIONS_PER_MINUTE == dpskit.fleet.AZURE_REGISTRATIONS_PER_MINUTE == 1000
    # 10 devices at 1,000 registrations a minute: 0.6 s.
    assert estimate.dps_onboarding_seconds == pytest.approx(0.6)
    assert estimate.devices == 10
    assert estimate.time_compression == 1.0
    (hub_estimate,) = estimate.hubs
    assert estimate.hub("estimate-hub") == hub_estimate
    assert (hub_estimate.hub, hub_estimate.devices) == ("estimate-hub", 10)
    assert hub_estimate.d2c_per_second == pytest.approx(25.0, rel=0.03)
    # The mean size is what the hub counted of what it stored (110 messages).
    stored = hub.telemetry()
    assert len(stored) == 110
    assert hub_estimate.mean_message_bytes == pytest.approx(
        sum(counted_bytes(m) for m in stored) / len(stored)
    )
    assert 520 < hub_estimate.mean_message_bytes < 1024
    assert not hub_estimate.needs_standard
    # A plain hub enforces nothing, so its presets refused nothing.
    assert hub_estimate.quota_refusals == 0
    assert hub_estimate.throttled is not None
    assert set(hub_estimate.throttled.values()) == {0}

    fits = {f.tier: (f.units, f.limited_by) for f in hub_estimate.fits}
    assert list(fits) == ["F1", "B1", "B2", "B3", "S1", "S2", "S3"]
    # 25/s is 2,160,000 messages a day, each one 4 KB block. S1 and B1 take 400,000 a unit:
    # 5.4, so 6 units for the daily quota (their send throttle's floor of 100/s is enough,
    # and 10 devices connecting within 0.6 s are 16.7/s, under the connection floor of 100/s).
    # S2 and B2 (6 M a unit, 120 sends/s) and S3 and B3 need one unit each.
    assert fits["S1"] == (6, "daily quota")
    assert fits["B1"] == (6, "daily quota")
    for tier in ("S2", "S3", "B2", "B3"):
        assert fits[tier] == (1, "none"), tier
    # F1 meters each message of 520 to 1,024 bytes as two 0.5 KB blocks: 4,320,000 a day,
    # against its 8,000 and its one unit.
    f1 = hub_estimate.fit("f1")
    assert f1.units is None
    assert f1.limited_by == "past its 1 unit (daily quota)"
    assert f1.metered_messages_per_day == pytest.approx(2 * 86_400 * 25.0, rel=0.03)
    assert hub_estimate.fit("S1").metered_messages_per_day == pytest.approx(
        86_400 * hub_estimate.d2c_per_second
    )
    assert str(hub_estimate.fit("S1")) == "S1 x 6 (daily quota)"
    assert str(hub_estimate.fit("S2")) == "S2 x 1"

    # Twins, methods or C2D rule out Basic and Free.
    standard = report.azure_estimate(needs_standard=True).hub("estimate-hub")
    assert standard.fit("B1").units is None
    assert standard.fit("B1").limited_by == "no twins, methods or C2D"
    assert standard.fit("S1").units == 6
    # Ten times compressed: 2.5/s in Azure's time, 216,000 a day, one S1 unit.
    slower = report.azure_estimate(time_compression=10).hub("estimate-hub")
    assert slower.d2c_per_second == pytest.approx(2.5, rel=0.03)
    assert (slower.fit("S1").units, slower.fit("S1").limited_by) == (1, "none")
    with pytest.raises(dpskit.ConfigError):
        report.azure_estimate(time_compression=0)

    frame = report.to_pandas("azure")
    assert list(frame.columns) == [
        "hub",
        "devices",
        "d2c_per_second",
        "mean_message_bytes",
        "tier",
        "units",
        "limited_by",
        "metered_messages_per_day",
    ]
    assert len(frame) == 7
    assert set(frame["hub"]) == {"estimate-hub"}
    by_tier = frame.set_index("tier")
    assert by_tier.loc["S1", "units"] == 6
    assert pd.isna(by_tier.loc["F1", "units"])
    assert by_tier.loc["S1", "limited_by"] == "daily quota"

    summary = report.summary()
    assert "On Azure:" in summary
    assert "onboarding via one DPS" in summary
    assert "S1 x 6 (daily quota) · S2 x 1 · S3 x 1" in summary
    assert "F1: past its 1 unit (daily quota)" in summary
    assert "refused during the run: 429 none; 403002 0" in summary


def test_a_paced_run_estimates_in_azure_time(setup: Setup) -> None:
    setup.hub("paced-hub")
    plan = dpskit.TelemetryPlan(interval=0.4, count=6, jitter=0.0)
    report = dpskit.Fleet(
        setup.dps,
        authority=setup.authority,
        count=5,
        prefix="paced-",
        telemetry=plan,
        pace_like_azure=True,
        time_compression=100.0,
    ).run(progress=False)
    assert report.outcomes == {"completed": 5}, report.summary()
    estimate = report.azure_estimate()
    assert estimate.time_compression == 100.0
    # 5 devices at 2.5/s here are 12.5/s; a hundred times faster than Azure, so 0.125/s there.
    assert estimate.hub("paced-hub").d2c_per_second == pytest.approx(0.125, rel=0.03)
    assert "rates divided by the time compression 100x" in report.summary()


def test_a_free_hub_shows_the_throttles_its_preset_produced(setup: Setup) -> None:
    hub = setup.hub("free-fleet-hub", sku="F1")
    # 150 devices dialling the hub at once, past F1's 100 new connections a second: the
    # connection throttle refuses some, which connect again after a backoff.
    report = dpskit.Fleet(
        setup.dps,
        authority=setup.authority,
        count=150,
        concurrency=150,
        prefix="free-",
        telemetry=dpskit.TelemetryPlan(interval=1.0, count=1),
    ).run(progress=False)
    usage = hub.usage()
    assert usage.throttled is not None
    assert usage.throttled["connections"] > 0, usage
    free = report.azure_estimate().hub("free-fleet-hub")
    # The hub is new: what it refused, it refused during this run.
    assert free.throttled == usage.throttled
    assert free.quota_refusals == usage.quota_refusals
    refused = f"429 connections {usage.throttled['connections']:,}"
    assert refused in report.summary()


def test_a_fleet_on_a_spent_daily_quota_ends_with_its_devices_failed(setup: Setup) -> None:
    """Once an F1 hub's 8,000 daily blocks are spent, the hub drops each connection that sends
    a message (403002 has no MQTT answer but the dropped connection). Each device gives up
    after five connections in a row dropped without an acknowledgement, so the run ends."""
    hub = setup.hub("spent-hub", sku="F1")
    connect = sas_device(setup.cloud, hub, "spender")

    async def spend() -> None:
        async with connect() as client:
            for _ in range(20):  # 20 x 400 blocks of 0.5 KB
                await client.send_telemetry(b"x" * 200 * 1024)

    asyncio.run(spend())
    assert hub.usage().messages_left == 0
    report = dpskit.Fleet(
        setup.dps,
        authority=setup.authority,
        count=3,
        prefix="late-",
        telemetry=dpskit.TelemetryPlan(interval=0.1, count=2),
    ).run(progress=False)
    assert report.outcomes == {"telemetry_failed": 3}, report.summary()
    assert report.messages_acknowledged == 0
    assert quota_refusals(hub) >= 15
    free = report.azure_estimate().hub("spent-hub")
    assert free.quota_refusals is not None
    assert free.quota_refusals >= 15
