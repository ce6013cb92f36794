"""What the tests of shards merged from files and of fleets run over executors share: the cloud
they run against, and what "the same report as the single-process run" means (the same devices,
ids, hubs, outcomes, per-device counts and messages; times differ: they are measured)."""

from __future__ import annotations

from typing import Any

import dpskit


def hashed_fleet_dps(cloud: dpskit.LocalCloud, authority: Any, name: str) -> dpskit.Dps:
    """Two hubs behind one DPS with hashed allocation, ``authority`` proven to it as
    ``issuing`` and an X.509 enrollment group ``fleet`` on it."""
    hubs = [cloud.create_hub(f"{name}-hub-a"), cloud.create_hub(f"{name}-hub-b")]
    dps = cloud.create_dps(f"{name}-dps")
    for hub in hubs:
        cloud.link_hub(dps, hub)
    dps.prove_possession("issuing", authority)
    dps.create_enrollment_group(
        "fleet", ca_reference="issuing", allocation_policy="hashed", hubs=hubs
    )
    return dps


def assert_same_run(merged: dpskit.FleetReport, whole: dpskit.FleetReport, devices: int) -> None:
    """``merged`` reports the very run ``whole`` did, device by device and message by
    message."""
    mine, theirs = merged.to_pandas("devices"), whole.to_pandas("devices")
    for column in ("registration_id", "outcome", "hub", "sent", "acknowledged", "index"):
        assert list(mine[column]) == list(theirs[column]), column
    assert merged.device_count == whole.device_count == devices
    assert merged.outcomes == whole.outcomes == {"completed": devices}
    assert merged.provisioned == whole.provisioned
    assert merged.devices_per_hub == whole.devices_per_hub
    assert merged.messages_sent == whole.messages_sent
    assert merged.messages_acknowledged == whole.messages_acknowledged
    frames = merged.to_pandas("messages"), whole.to_pandas("messages")
    for column in ("device_id", "seq", "message_id", "acknowledged", "duplicate"):
        assert list(frames[0][column]) == list(frames[1][column]), column
    assert merged.shard is None
    assert merged.summary().startswith(f"Fleet of {devices} devices: ")
