"""dpskit's own device clients, awaited from asyncio, against the emulator: provisioning with
X.509 and symmetric keys, the hub connection with telemetry, twin, desired patches, direct
methods and C2D, refusals with their diagnosis, cancellation, wrong trust, the system roots
by default, and telemetry over IoT Hub's size limit refused before it is sent."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpskit
from dpskit._native import HubConnections


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority]]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("dev-hub")
        dps = cloud.create_dps("dev-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Device Root")
        inter = root.create_intermediate("Device Intermediate")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("x509", ca_reference="root")
        yield cloud, dps, inter


def test_provision_connect_and_use_the_hub(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("async-dev-1")
    hub = cloud.hubs()[0]

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        assert (result.status, result.device_id) == ("assigned", "async-dev-1")
        assert result.assigned_hub == hub.host_name
        assert result.substatus == "initialAssignment"
        assert result.created is not None
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            assert client.connection_state == "connected"
            await client.send_telemetry({"t": 21.5}, {"unit": "C"}, message_id="m-1")
            await client.update_reported({"firmware": "1.0.0"})
            twin = await client.get_twin()
            assert twin["reported"]["firmware"] == "1.0.0"
            assert "$version" in twin["desired"]

            # The service side, from another thread, while the device listens.
            loop = asyncio.get_running_loop()
            desired = client.desired_updates()
            await loop.run_in_executor(None, hub.update_desired, "async-dev-1", {"interval": 5})
            patch = await asyncio.wait_for(anext(desired), 10)
            assert patch["interval"] == 5

            requests = client.method_requests()
            call = loop.run_in_executor(
                None, lambda: hub.invoke_method("async-dev-1", "reboot", {"in": 1}, timeout=10)
            )
            request = await asyncio.wait_for(anext(requests), 10)
            assert (request.name, request.payload) == ("reboot", {"in": 1})
            await request.respond(200, {"ok": True})
            answer = await call
            assert (answer.status, answer.payload) == (200, {"ok": True})

            messages = client.messages()
            await loop.run_in_executor(
                None, lambda: hub.send_c2d("async-dev-1", b"hi", properties={"k": "v"})
            )
            message = await asyncio.wait_for(anext(messages), 10)
            assert (message.body, message.properties["k"]) == (b"hi", "v")
            assert message.message_id

    asyncio.run(scenario())
    [record] = hub.telemetry("async-dev-1")
    assert record.json() == {"t": 21.5}
    assert record.properties == {"unit": "C"}
    assert (record.message_id, record.content_type) == ("m-1", "application/json")


def test_symmetric_key_group_and_sync_facade(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, _ = world
    group = dps.create_enrollment_group("keys", symmetric_key=True)
    assert group.primary_key is not None
    result = dpskit.provision_sync(
        dps.device_endpoint,
        id_scope=dps.id_scope,
        registration_id="sym-dev-1",
        group_key=group.primary_key,
        trust=cloud.trust_pem,
    )
    assert result.device_id == "sym-dev-1"

    async def send() -> None:
        key = dpskit.derive_device_key(group.primary_key or "", "sym-dev-1")
        async with dpskit.HubClient.connect(
            result, symmetric_key=key, trust=cloud.trust_pem
        ) as client:
            await client.send_telemetry("plain text")

    asyncio.run(send())
    assert cloud.hubs()[0].telemetry("sym-dev-1")[0].body == b"plain text"


def test_refusals_say_why(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
    tmp_path: Path,
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("lonely-leaf")
    # The leaf alone, without its intermediate: DPS cannot build the chain.
    bare = dpskit.DeviceCertificate.from_pem(device.certificate_pem, device.private_key_pem)
    with pytest.raises(dpskit.RegistrationFailedError) as refused:
        dpskit.provision_sync(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=bare, trust=cloud.trust_pem
        )
    assert "no chain is sent" in str(refused.value)
    # Files work as credentials too, and the full chain provisions.
    files = device.save(tmp_path)
    result = dpskit.provision_sync(
        dps.device_endpoint,
        id_scope=dps.id_scope,
        certificate=(files["chain"], files["private_key"]),
        trust=str(cloud.data_dir / "emulator-ca.cert.pem"),
    )
    assert result.status == "assigned"


def test_wrong_trust_and_cancellation(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("careful-dev")
    other = dpskit.CertificateAuthority.create_root("Not The Emulator")
    with pytest.raises(dpskit.TransportError, match=r"(?i)certificate|tls|unknown"):
        dpskit.provision_sync(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            certificate=device,
            trust=other.certificate.pem,
        )

    async def cancelled() -> None:
        dps.set_assignment_latency(30)
        try:
            task = asyncio.ensure_future(
                dpskit.provision(
                    dps.device_endpoint,
                    id_scope=dps.id_scope,
                    certificate=device,
                    trust=cloud.trust_pem,
                )
            )
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            dps.set_assignment_latency(0)

    asyncio.run(cancelled())
    # The emulator keeps serving: the same device provisions right after.
    assert (
        dpskit.provision_sync(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        ).status
        == "assigned"
    )


def test_throttled_registrations_honour_retry_after(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("patient-dev")
    # The next register request is refused with 429 and retry-after: 1; the client waits as
    # told, then tries again.
    dps.refuse_registrations(1, status=429)
    started = time.monotonic()
    result = dpskit.provision_sync(
        dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
    )
    assert result.status == "assigned"
    waited = time.monotonic() - started
    assert 1.0 <= waited < 30, waited


def test_cancelling_a_waiting_iterator_leaves_the_client_usable(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("cancel-dev")
    hub = cloud.hubs()[0]

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            waiting = asyncio.ensure_future(anext(client.messages()))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # The connection is untouched: telemetry still goes, messages still arrive.
            await client.send_telemetry("still here")
            messages = client.messages()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: hub.send_c2d("cancel-dev", b"after the cancel")
            )
            message = await asyncio.wait_for(anext(messages), 10)
            assert message.body == b"after the cancel"
        assert client.connection_state == "closed"

    asyncio.run(scenario())
    assert [m.body for m in hub.telemetry("cancel-dev")] == [b"still here"]


def test_hub_connections_trust_the_system_roots_without_a_pem(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    """Without ``trust_pem``, ``HubConnections`` verifies hubs against the operating system's
    roots, as Azure needs. The emulator's CA is not among them, so its hub is refused; the same
    device connects when given the emulator's CA."""
    cloud, dps, inter = world
    device = inter.issue_device("system-roots-dev")
    result = dpskit.provision_sync(
        dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
    )
    hub = result.assigned_hub
    assert hub is not None
    system = HubConnections()
    try:
        report = system.connect(hub, result.port, [device])
        assert report["connected"] == 0
        error = report["failures"]["first"][0]["error"]
        assert re.search(r"(?i)certificate|issuer", error), error
    finally:
        system.close()
    pinned = HubConnections(cloud.trust_pem)
    try:
        report = pinned.connect(hub, result.port, [device])
        assert report["connected"] == 1, report
    finally:
        pinned.close()


def test_telemetry_over_256_kb_raises_and_the_connection_carries_on(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("big-telemetry-dev")
    hub = cloud.hubs()[0]

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            # Queued, the message would never be acknowledged: the guard turns that into a
            # failure instead of a hang.
            with pytest.raises(dpskit.ConfigError, match="262144"):
                await asyncio.wait_for(client.send_telemetry(b"x" * 300_000), 30)
            # The properties count too; ConfigError is a ValueError, as the official SDKs raise.
            with pytest.raises(ValueError, match="262144 bytes"):
                await client.send_telemetry(b"y" * 262_000, {"note": "z" * 200})
            await client.send_telemetry(b"normal")
            assert client.connection_state == "connected"

    asyncio.run(scenario())
    bodies = [m.body for m in hub.telemetry("big-telemetry-dev")]
    assert bodies == [b"normal"]


def test_method_responses_and_reported_patches_past_azure_limits_raise_before_sending(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, inter = world
    device = inter.issue_device("limits-dev")
    hub = cloud.hubs()[0]

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            # 32 KB of reported properties: a patch larger than that is refused here, typed.
            with pytest.raises(dpskit.ConfigError, match="32768"):
                await client.update_reported({"blob": "r" * 33_000})
            await client.update_reported({"blob": "r" * 1_000})

            loop = asyncio.get_running_loop()
            requests = client.method_requests()
            call = loop.run_in_executor(
                None, lambda: hub.invoke_method("limits-dev", "dump", timeout=10)
            )
            request = await asyncio.wait_for(anext(requests), 10)
            # 128 KB of method response: refused before sending, and the call can still be
            # answered.
            with pytest.raises(ValueError, match="131072"):
                await request.respond(200, "m" * (128 * 1024))
            await request.respond(200, {"size": "fits"})
            answer = await call
            assert (answer.status, answer.payload) == (200, {"size": "fits"})
            assert client.connection_state == "connected"

    asyncio.run(scenario())
    assert hub.get_twin("limits-dev")["properties"]["reported"]["blob"] == "r" * 1_000
    # The service side meets the same 32 KB for desired properties: Azure's 403100, which is
    # not a credential problem.
    with pytest.raises(dpskit.ServiceError) as too_big:
        hub.update_desired("limits-dev", {"blob": "d" * 33_000})
    assert (too_big.value.status, too_big.value.error_code) == (403, 403100)
    assert not isinstance(too_big.value, dpskit.AuthenticationError)
    assert "'Properties.Desired' size" in str(too_big.value)
