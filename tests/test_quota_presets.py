"""Azure's IoT Hub tiers as presets: a hub created with ``sku=`` shows its tier in ARM (to the
official management SDK too) and enforces the tier's daily message quota, metered in Azure's
blocks, on real device connections; a hub created without one enforces nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit


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
    identity = hub.create_device("quota-dev", symmetric_key=True)
    assert identity.primary_key is not None
    key = identity.primary_key

    async def scenario() -> None:
        async with dpskit.HubClient.connect(
            f"{hub.host_name}:{cloud.mqtt_port}",
            device_id="quota-dev",
            symmetric_key=key,
            trust=cloud.trust_pem,
        ) as client:
            # 200 KB is 400 blocks of 0.5 KB: twenty messages spend the day's 8,000.
            for _ in range(20):
                await client.send_telemetry(b"x" * 200 * 1024)
            assert hub.usage().messages_left == 0
            # The hub refuses the next one (403002) by closing the connection unacknowledged.
            with pytest.raises((dpskit.DpsKitError, TimeoutError)):
                await asyncio.wait_for(client.send_telemetry(b"one more"), 5)

    asyncio.run(scenario())
    usage = hub.usage()
    assert usage.messages_used == 8000
    assert usage.quota_refusals >= 1
    assert len(hub.telemetry("quota-dev")) == 20


def test_a_hub_without_a_sku_is_s1_and_enforces_nothing(cloud: dpskit.LocalCloud) -> None:
    hub = cloud.create_hub("plain-hub")
    assert (hub.sku, hub.units) == ("S1", 1)
    usage = hub.usage()
    assert not usage.presets
    assert usage.daily_quota == 400_000
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", units=2)
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", sku="S4")
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub("sized-hub", sku="F1", units=2)


iothub = pytest.importorskip("azure.mgmt.iothub")

from azure.core.credentials import AccessToken, AccessTokenInfo  # noqa: E402
from azure.mgmt.iothub import IotHubClient  # noqa: E402
from azure.mgmt.iothub.models import IotHubDescription, IotHubSkuInfo  # noqa: E402


class _LocalToken:
    """A TokenCredential for the emulator, which accepts any bearer token on loopback."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo("local-token", int(time.time()) + 3600)


def test_the_management_sdk_sees_and_sets_the_sku(cloud: dpskit.LocalCloud, tmp_path: Path) -> None:
    trust = tmp_path / "emulator-ca.pem"
    trust.write_text(cloud.trust_pem)
    client = IotHubClient(
        _LocalToken(),
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
