"""Azure's IoT Hub tiers as presets: a hub created with ``sku=`` shows its tier in ARM (to the
official management SDK too) and enforces the tier's daily message quota, metered in Azure's
blocks, on real device connections; a hub created without one enforces nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import dpskit
from conftest import LocalToken, sas_device, throttled


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


def test_free_tier_quota_is_metered_in_half_kilobyte_blocks_and_refuses_once_spent(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = cloud.create_hub("free-hub", sku="F1")
    assert (hub.sku, hub.units) == ("F1", 1)
    assert cloud.hub("free-hub").sku == "F1"
    before = hub.usage()
    assert before.presets
    assert (before.daily_quota, before.meter_block_bytes, before.messages_used) == (8000, 512, 0)
    assert before.resets_at.hour == 0
    assert before.resets_at.minute == 0
    connect = sas_device(cloud, hub, "quota-dev")

    async def scenario() -> None:
        async with connect() as client:
            # 200 KB is 400 blocks of 0.5 KB: twenty messages spend the day's 8,000.
            for _ in range(20):
                await client.send_telemetry(b"x" * 200 * 1024)
            assert hub.usage().messages_left == 0
            # The hub refuses the next one (403002) by closing the connection unacknowledged,
            # each time the client sends it again; after five such connections it gives up.
            with pytest.raises(dpskit.TransportError, match="refuses them"):
                await asyncio.wait_for(client.send_telemetry(b"one more"), 60)

    asyncio.run(scenario())
    usage = hub.usage()
    assert usage.messages_used == 8000
    assert usage.quota_refusals is not None
    assert usage.quota_refusals >= 1
    assert len(hub.telemetry("quota-dev")) == 20


def test_a_hub_without_a_sku_is_s1_and_enforces_nothing(cloud: dpskit.LocalCloud) -> None:
    hub = cloud.create_hub("plain-hub")
    assert (hub.sku, hub.units) == ("S1", 1)
    usage = hub.usage()
    assert not usage.presets
    assert usage.daily_quota == 400_000
    # Azure meters every hub: a hub enforcing nothing still shows today's messages, counted in
    # 4 KB blocks (5,000 bytes are two).
    connect = sas_device(cloud, hub, "plain-dev")

    async def send() -> None:
        async with connect() as client:
            await client.send_telemetry(b"x" * 5000)

    asyncio.run(send())
    assert hub.usage().messages_used == 2
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", units=2)
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", sku="S4")
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", sku="F1", units=2)


def test_service_operations_past_an_s1_throttle_are_refused_then_retried(
    cloud: dpskit.LocalCloud,
) -> None:
    """Each service operation counts against its own throttle of the tier: the hub answers
    429001 with ``Retry-After`` past it, dpskit's client waits and retries, and ``usage()``
    counts the refusals per operation."""
    hub = cloud.create_hub("s1-service-hub", sku="S1")
    hub.create_device("svc-dev", symmetric_key=True)
    # Registry operations: 100 a minute per unit, a minute's worth at once (the create was the
    # first; the bucket earns one back every 0.6 s meanwhile).
    for _ in range(110):
        assert hub.device("svc-dev").device_id == "svc-dev"
    # Twin reads (100 a second) and updates (50 a second), from 16 threads at once: past the
    # burst some are refused once, then served.
    with ThreadPoolExecutor(16) as pool:
        twins = list(pool.map(lambda _: hub.get_twin("svc-dev"), range(400)))
        assert all("desired" in twin["properties"] for twin in twins)
        list(pool.map(lambda i: hub.update_tags("svc-dev", {"n": i}), range(200)))
    # Queries: 20 a minute per unit, a minute's worth at once.
    for _ in range(21):
        assert [d.device_id for d in hub.devices()] == ["svc-dev"]
    counts = throttled(hub)
    for operation in ("twin_reads", "twin_updates", "queries", "registry_operations"):
        assert counts[operation] >= 1, (operation, counts)
    assert counts["connections"] == 0
    assert counts["d2c_sends"] == 0


def test_direct_methods_are_throttled_by_payload_blocks(
    cloud: dpskit.LocalCloud,
) -> None:
    """S1 allows 160 KB of method payload a second (4 KB blocks, 40 a second): two 100 KB
    calls in a row spend 50 blocks, so the second waits."""
    hub = cloud.create_hub("s1-methods-hub", sku="S1")
    connect = sas_device(cloud, hub, "method-dev")

    async def scenario() -> None:
        async with connect() as client:
            loop = asyncio.get_running_loop()
            requests = client.method_requests()
            payload = {"blob": "x" * 100 * 1024}
            for _ in range(2):
                call = loop.run_in_executor(
                    None, lambda: hub.invoke_method("method-dev", "load", payload, timeout=10)
                )
                request = await asyncio.wait_for(anext(requests), 15)
                await request.respond(200, {"ok": True})
                assert (await call).status == 200

    asyncio.run(scenario())
    assert throttled(hub)["direct_methods"] >= 1


def test_c2d_sends_past_the_throttle_are_refused_as_throttled(cloud: dpskit.LocalCloud) -> None:
    """S1 allows 100 C2D sends a minute per unit: the AMQP endpoint rejects the next with IoT
    Hub's throttling condition, which the sender raises as ThrottledError, and counts it."""
    hub = cloud.create_hub("s1-c2d-hub", sku="S1")
    # 50 C2D messages may wait per device: spread the sends over three devices.
    devices = ("c2d-a", "c2d-b", "c2d-c")
    for name in devices:
        hub.create_device(name, symmetric_key=True)
    refused: dpskit.ThrottledError | None = None
    sent = 0
    for i in range(150):
        try:
            hub.send_c2d(devices[i % 3], b"ping")
        except dpskit.ThrottledError as throttled_send:
            refused = throttled_send
            break
        sent += 1
    assert refused is not None, "150 sends passed S1's 100 a minute"
    assert 100 <= sent < 150, sent
    assert refused.error_code == 429001
    assert throttled(hub)["c2d_sends"] >= 1


def test_device_twin_requests_past_the_throttle_get_429(cloud: dpskit.LocalCloud) -> None:
    """A device's twin GETs count against the hub's twin-read throttle like the service's:
    past 100 in a burst the hub answers 429001 on the twin response topic."""
    hub = cloud.create_hub("s1-twin-hub", sku="S1")
    connect = sas_device(cloud, hub, "twin-dev")

    async def scenario() -> list[BaseException]:
        async with connect() as client:
            outcomes = await asyncio.gather(
                *(client.get_twin() for _ in range(150)), return_exceptions=True
            )
            return [o for o in outcomes if isinstance(o, BaseException)]

    refusals = asyncio.run(scenario())
    assert refusals, "150 twin reads at once were all served"
    assert all(isinstance(r, dpskit.ServiceError) and r.status == 429 for r in refusals), refusals
    assert throttled(hub)["twin_reads"] == len(refusals)


def test_the_daily_meter_survives_a_restart(tmp_path: Path) -> None:
    """The meter is counted again from the stored telemetry: a restart hands out no second
    quota."""
    with dpskit.LocalCloud(port=0, data_dir=tmp_path) as first:
        hub = first.create_hub("restart-hub", sku="F1")
        connect = sas_device(first, hub, "meter-dev")

        async def send() -> None:
            async with connect() as client:
                # 1,000 bytes and a 24-byte property bag: two 0.5 KB blocks each.
                for _ in range(3):
                    await client.send_telemetry(b"x" * 1000, {"unit": "C"})

        asyncio.run(send())
        assert hub.usage().messages_used == 6
    with dpskit.LocalCloud(port=0, data_dir=tmp_path) as second:
        usage = second.hub("restart-hub").usage()
        assert (usage.presets, usage.messages_used) == (True, 6)


def test_dps_presets_pace_registrations_and_service_operations(
    cloud: dpskit.LocalCloud, dpskit_ca: Any
) -> None:
    """A DPS created with ``presets=True`` keeps Azure's rates: 1,000 registrations a minute
    (a second's worth, 16, at once), so of 40 devices registering together most are told to
    retry (429 with ``retry-after``) and all end up assigned; and 1,000 service operations a
    minute, past which the service API answers 429 and the client waits."""
    dps = cloud.create_dps("preset-dps", presets=True)
    cloud.link_hub(dps, cloud.create_hub("preset-dps-hub"))
    dps.prove_possession("preset-ca", dpskit_ca.intermediate)
    dps.create_enrollment_group("preset-group", ca_reference="preset-ca")
    report = dpskit.Fleet(dps, authority=dpskit_ca.intermediate, count=40, prefix="paced-").run(
        progress=False
    )
    assert report.outcomes == {"completed": 40}, report.summary()
    assert report.retries["provisioning"] >= 20, report.summary()
    with cloud.record_requests() as recording:
        for _ in range(1100):
            assert dps.enrollment_group("preset-group").enrollment_group_id == "preset-group"
    statuses = [r.status for r in recording.requests if r.api == "dps"]
    assert 429 in statuses
    assert set(statuses) == {200, 429}
    # The same fleet on a DPS without presets is not paced.
    plain = cloud.create_dps("plain-dps")
    cloud.link_hub(plain, "preset-dps-hub")
    plain.prove_possession("plain-ca", dpskit_ca.intermediate)
    plain.create_enrollment_group("plain-group", ca_reference="plain-ca")
    unpaced = dpskit.Fleet(
        plain, authority=dpskit_ca.intermediate, count=40, prefix="unpaced-"
    ).run(progress=False)
    assert unpaced.outcomes == {"completed": 40}
    assert unpaced.retries["provisioning"] == 0


iothub = pytest.importorskip("azure.mgmt.iothub")

from azure.mgmt.iothub import IotHubClient  # noqa: E402
from azure.mgmt.iothub.models import IotHubDescription, IotHubSkuInfo  # noqa: E402


def test_the_management_sdk_sees_and_sets_the_sku(cloud: dpskit.LocalCloud, tmp_path: Path) -> None:
    trust = tmp_path / "emulator-ca.pem"
    trust.write_text(cloud.trust_pem)
    client = IotHubClient(
        LocalToken(),
        cloud.subscription_id,
        base_url=cloud.arm_endpoint,
        connection_verify=str(trust),
    )
    group = dpskit.LocalCloud.resource_group
    cloud.create_hub("sdk-sized-hub", sku="S2", units=3)
    seen = client.iot_hub_resource.get(group, "sdk-sized-hub")
    assert seen.sku.name == "S2"
    assert seen.sku.capacity == 3
    assert seen.sku.tier == "Standard"
    # Created by the SDK: the sku is stored as asked; presets only with dpskit's tag.
    for name, tags in (("sdk-b3-hub", {}), ("sdk-tagged-hub", {"dpskit-presets": "on"})):
        created = client.iot_hub_resource.begin_create_or_update(
            group,
            name,
            IotHubDescription(
                location="westeurope", sku=IotHubSkuInfo(name="B3", capacity=2), tags=tags
            ),
        ).result()
        assert (created.sku.name, created.sku.capacity, created.sku.tier) == ("B3", 2, "Basic")
        usage = cloud.hub(name).usage()
        assert (usage.sku, usage.units, usage.daily_quota) == ("B3", 2, 600_000_000)
        assert usage.presets == bool(tags)


def test_a_throttled_connection_acknowledges_what_it_stored_before_it_closes(
    cloud: dpskit.LocalCloud,
) -> None:
    """Three devices with 100 messages in flight each go past S1's 100 sends a second and its
    second of traffic shaping: the hub refuses one, acknowledges every message it had already
    stored, then closes the connection. The devices reconnect and send only what was not
    acknowledged, so each message is stored exactly once."""
    hub = cloud.create_hub("s1-shaping-hub", sku="S1")
    connects = [sas_device(cloud, hub, f"shaped-{i}") for i in range(3)]

    async def device(connect: Any, index: int) -> None:
        async with connect() as client:
            await asyncio.gather(
                *(client.send_telemetry({"n": n}, message_id=f"{index}-{n}") for n in range(150))
            )

    async def scenario() -> None:
        await asyncio.gather(*(device(c, i) for i, c in enumerate(connects)))

    asyncio.run(scenario())
    assert throttled(hub)["d2c_sends"] >= 1
    stored = [m.message_id or "" for m in hub.telemetry()]
    assert sorted(stored) == sorted(f"{i}-{n}" for i in range(3) for n in range(150))
