"""``AzureCloud`` against the emulator's ARM as Azure runs it: hub and DPS writes are
long-running operations (``arm_operation_seconds``), lists are paged (``arm_page_size``), and
every Nth request of each REST API is throttled with a 429 (``throttle_every``). The whole
walkthrough, the demo and a small fleet must get through, which takes a client that waits for
operations, follows ``nextLink`` and retries; the emulator's counts prove the 429s were met."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit
from conftest import port_is_free
from dpskit.cli import main

#: How long each hub or DPS create, update and delete runs.
LATENCY = 1.0


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[dpskit.LocalCloud]:
    """The strict local cloud; the 429s advise ``Retry-After: 1`` where the test says
    (``@pytest.mark.parametrize("cloud", [1], indirect=True)``), else 0 to keep the suite fast
    (a retry is a retry either way)."""
    # Devices reach a DPS and hubs known through ARM on Azure's port, as on Azure.
    if not port_is_free(8883):
        pytest.skip("port 8883 is taken (the Azure path's devices dial it)")
    with dpskit.LocalCloud(
        port=8883,
        poll_retry_after=0,
        arm_operation_seconds=LATENCY,
        arm_page_size=2,
        throttle_every=5,
        throttle_retry_after=getattr(request, "param", 0),
    ) as running:
        yield running


def _azure(cloud: dpskit.LocalCloud, credential: Any = "any-token") -> dpskit.AzureCloud:
    return dpskit.AzureCloud(
        cloud.subscription_id,
        cloud.resource_group,
        credential,
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )


def _provisioning_state(cloud: dpskit.LocalCloud, kind: str, name: str) -> str:
    """The resource's provisioningState as ARM reports it (a plain GET, no client logic)."""
    version = "2023-06-30" if kind == "IotHubs" else "2022-02-05"
    url = (
        f"{cloud.arm_endpoint}/subscriptions/{cloud.subscription_id}/resourceGroups/"
        f"{cloud.resource_group}/providers/Microsoft.Devices/{kind}/{name}?api-version={version}"
    )
    context = ssl.create_default_context(cadata=cloud.trust_pem)
    request = urllib.request.Request(url, headers={"Authorization": "Bearer any"})  # noqa: S310
    for _ in range(10):
        try:
            with urllib.request.urlopen(request, context=context) as answer:  # noqa: S310
                state: str = json.load(answer)["properties"]["provisioningState"]
                return state
        except urllib.error.HTTPError as error:
            if error.code != 429:  # the throttle applies to this GET too
                raise
            time.sleep(1)
    raise AssertionError("throttled ten times in a row")


@pytest.mark.parametrize("cloud", [1], indirect=True)
def test_the_whole_walkthrough_waits_for_operations_and_rides_out_throttling(
    cloud: dpskit.LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    azure = _azure(cloud)
    started = time.perf_counter()
    hub = azure.create_hub("lro-walk-hub", "westeurope")
    dps = azure.create_dps("lro-walk-dps", "westeurope")
    # Each returns once ARM says the operation succeeded, never while activating.
    for kind, name in (("IotHubs", hub.name), ("provisioningServices", dps.name)):
        assert _provisioning_state(cloud, kind, name) == "Succeeded"
    link = azure.link_hub(dps, hub)
    assert link.host_name == hub.host_name
    root = dpskit.CertificateAuthority.create_root("LRO Walk Root")
    intermediate = root.create_intermediate("LRO Walk Intermediate")
    assert dps.prove_possession("root", root).is_verified
    assert dps.prove_possession("intermediate", intermediate).is_verified
    dps.create_enrollment_group("lro-devices", ca_reference="intermediate", hubs=[hub])
    device = intermediate.issue_device("lro-walk-device")

    async def provision_and_send() -> str:
        result = await dpskit.provision(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            certificate=device,
            trust=cloud.trust_pem,
        )
        assert result.assigned_hub == hub.host_name
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            for n in range(3):
                await client.send_telemetry({"n": n})
        assert result.device_id is not None
        return result.device_id

    device_id = asyncio.run(provision_and_send())
    # What arrived, through the hub service API (throttled too). On the Azure path that API
    # is at https://{hostName}, which only Azure serves: the local cloud's view reads it.
    local_hub = cloud.hub(hub.name)
    assert [d.device_id for d in local_hub.devices()] == [device_id]
    assert len(local_hub.telemetry(device_id)) == 3
    # Enough service calls that each API meets its 1-in-5 throttle, and retries through it.
    for _ in range(5):
        assert [g.enrollment_group_id for g in dps.enrollment_groups()] == ["lro-devices"]
        assert len(local_hub.devices()) == 1
    walkthrough = time.perf_counter() - started

    # Delete and create the same names again: each delete returns once the name is free.
    azure.delete_dps(dps)
    azure.delete_hub(hub)
    assert azure.create_hub("lro-walk-hub", "westeurope").name == "lro-walk-hub"
    assert azure.create_dps("lro-walk-dps", "westeurope").id_scope
    assert _provisioning_state(cloud, "IotHubs", "lro-walk-hub") == "Succeeded"
    # A list past the page size (2) follows nextLink to the end.
    for name in ("lro-extra-a", "lro-extra-b"):
        azure.create_hub(name, "westeurope")
    assert sorted(h.name for h in azure.hubs()) == [
        "lro-extra-a",
        "lro-extra-b",
        "lro-walk-hub",
    ]
    throttled = cloud.throttled_requests
    assert throttled.arm >= 5, throttled
    assert throttled.dps_service >= 1, throttled
    assert throttled.hub_service >= 1, throttled
    with capsys.disabled():
        print(
            f"\n[lro] walkthrough with {LATENCY:.0f} s operations and 1 in 5 requests throttled "
            f"(Retry-After 1 s): {walkthrough:.1f} s; {throttled.total} 429s met in the test"
        )


def test_the_demo_runs_on_the_azure_path_against_the_strict_emulator(
    cloud: dpskit.LocalCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = tmp_path / "emulator-ca.pem"
    trust.write_text(cloud.trust_pem)
    monkeypatch.setenv("LRO_TEST_TOKEN", "any-token")
    code = main(
        [
            "demo",
            "--azure",
            "--dir",
            str(tmp_path / "demo"),
            "--devices",
            "2",
            "--subscription",
            cloud.subscription_id,
            "--resource-group",
            cloud.resource_group,
            "--token-env",
            "LRO_TEST_TOKEN",
            "--arm-endpoint",
            cloud.arm_endpoint,
            "--trust-file",
            str(trust),
        ]
    )
    assert code == 0
    # The demo deleted what it created, and waited for it: nothing is left, not even Deleting.
    assert cloud.hubs() == []
    assert cloud.all_dps() == []
    assert cloud.throttled_requests.arm > 0


def test_a_small_fleet_provisions_through_a_dps_set_up_over_throttled_arm(
    cloud: dpskit.LocalCloud, dpskit_ca: Any
) -> None:
    azure = _azure(cloud)
    hub = azure.create_hub("lro-fleet-hub", "westeurope")
    dps = azure.create_dps("lro-fleet-dps", "westeurope")
    azure.link_hub(dps, hub)
    dps.prove_possession("issuing", dpskit_ca.intermediate)
    dps.create_enrollment_group("lro-fleet", ca_reference="issuing", hubs=[hub])
    report = dpskit.Fleet(
        dps,
        authority=dpskit_ca.intermediate,
        count=10,
        prefix="lro-",
        telemetry=dpskit.TelemetryPlan(interval=0.05, count=2, seed=3),
    ).run(progress=False)
    assert report.outcomes == {"completed": 10}, report.summary()
    assert report.messages_acknowledged == 20
    assert len(cloud.hub(hub.name).telemetry()) == 20
    assert cloud.throttled_requests.arm > 0


def test_a_client_throttled_without_end_stops_with_azures_advice() -> None:
    with dpskit.LocalCloud(port=0, throttle_every=1, throttle_retry_after=0) as cloud:
        with pytest.raises(dpskit.ThrottledError) as raised:
            cloud.hubs()
        assert raised.value.retry_after == 0
        # The first attempt and the retries, each answered 429.
        assert cloud.throttled_requests.arm == 8
