"""The official Azure SDK's IoT Hub client, unchanged, against the local cloud's hubs.

A device provisions through DPS (X.509 group, symmetric-key group), connects to the hub DPS
assigned, and uses every device feature: telemetry with properties, twin GET and reported
patches, desired-property patches, direct methods, cloud-to-device messages; and a free-tier
hub's daily quota stopping it. The SDK dials port 8883 only, so the module shares one
``LocalCloud(port=8883)``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.iot.device", reason="the official Azure IoT device SDK is not installed")

from azure.iot.device import (
    X509,
    IoTHubDeviceClient,
    Message,
    MethodResponse,
    ProvisioningDeviceClient,
)

import dpskit
from conftest import granted, port_is_free, quota_refusals, throttled, wait_until

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    # Probed as the emulator binds (SO_REUSEADDR): connections of an earlier module still in
    # TIME-WAIT do not make the port taken.
    if not port_is_free(8883):
        pytest.skip("port 8883 is taken; the official SDK cannot dial another port")
    with dpskit.LocalCloud(port=8883) as cloud:
        dps = cloud.create_dps("hub-peer-dps")
        cloud.link_hub(dps, cloud.create_hub("hub-peer-hub"))
        yield cloud


def _connected_x509_client(
    cloud: dpskit.LocalCloud, tmp_path: Path, registration_id: str
) -> tuple[Any, dpskit.Hub]:
    dps = cloud.dps("hub-peer-dps")
    root = dpskit.CertificateAuthority.create_root(f"{registration_id} Root")
    inter = root.create_intermediate(f"{registration_id} Intermediate")
    dps.prove_possession(f"{registration_id}-ca", inter)
    dps.create_enrollment_group(
        registration_id,
        ca_reference=f"{registration_id}-ca",
        initial_twin={"tags": {"site": "lab"}, "properties": {"desired": {"interval": 5}}},
    )
    files = inter.issue_device(registration_id).save(tmp_path)
    x509 = X509(  # type: ignore[no-untyped-call]
        cert_file=str(files["chain"]), key_file=str(files["private_key"])
    )
    registration = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.device_endpoint,
        registration_id=registration_id,
        id_scope=dps.id_scope,
        x509=x509,
        server_verification_cert=cloud.trust_pem,
    ).register()
    assert registration.status == "assigned"
    state = registration.registration_state
    assert state is not None
    cloud.trace(registration_id)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=cloud.trust_pem,
    )
    client.connect()
    hub = next(h for h in cloud.hubs() if h.host_name == state.assigned_hub)
    return client, hub


def test_telemetry_twin_methods_and_c2d_with_x509(cloud: dpskit.LocalCloud, tmp_path: Path) -> None:
    client, hub = _connected_x509_client(cloud, tmp_path, "sdk-full-1")
    try:
        message = Message(json.dumps({"temperature": 21.5}))  # type: ignore[no-untyped-call]
        message.content_type = "application/json"
        message.content_encoding = "utf-8"
        message.message_id = "m-1"
        message.custom_properties["unit"] = "C"
        client.send_message(message)  # returns once PUBACKed: stored
        [received] = hub.telemetry("sdk-full-1")
        assert received.json() == {"temperature": 21.5}
        assert received.properties == {"unit": "C"}
        assert (received.message_id, received.content_type, received.content_encoding) == (
            "m-1",
            "application/json",
            "utf-8",
        )

        twin = client.get_twin()
        assert twin["desired"] == {"interval": 5, "$version": 1}
        client.patch_twin_reported_properties({"firmware": "1.0.0", "nested": {"a": 1}})
        client.patch_twin_reported_properties({"nested": {"a": None, "b": 2}})
        service_twin = hub.get_twin("sdk-full-1")
        assert service_twin["tags"] == {"site": "lab"}
        assert service_twin["properties"]["reported"] == {
            "firmware": "1.0.0",
            "nested": {"b": 2},
            "$version": 3,
        }

        patches: list[dict[str, Any]] = []
        messages: list[Any] = []
        client.on_twin_desired_properties_patch_received = patches.append
        client.on_message_received = messages.append
        client.on_method_request_received = lambda request: client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"echo": request.payload})
        )
        # The handlers subscribe lazily; wait until the hub has granted the subscriptions.
        assert wait_until(lambda: granted(cloud, "sdk-full-1", "$iothub/methods/POST/#")), (
            cloud.format_trace("sdk-full-1")
        )
        assert wait_until(
            lambda: granted(cloud, "sdk-full-1", "$iothub/twin/PATCH/properties/desired/#")
        ), cloud.format_trace("sdk-full-1")
        assert wait_until(
            lambda: granted(cloud, "sdk-full-1", "devices/sdk-full-1/messages/devicebound/#")
        ), cloud.format_trace("sdk-full-1")
        hub.update_desired("sdk-full-1", {"interval": 10})
        assert wait_until(lambda: bool(patches))
        assert patches[0] == {"interval": 10, "$version": 2}

        result = hub.invoke_method("sdk-full-1", "reboot", {"delay": 1}, timeout=10)
        assert (result.status, result.payload) == (200, {"echo": {"delay": 1}})

        hub.send_c2d("sdk-full-1", b"hello", properties={"kind": "greeting"})
        assert wait_until(lambda: bool(messages))
        assert messages[0].data == b"hello"
        assert messages[0].custom_properties == {"kind": "greeting"}
        assert messages[0].message_id
    finally:
        client.shutdown()
    with pytest.raises(dpskit.NotFoundError) as offline:
        hub.invoke_method("sdk-full-1", "reboot", timeout=2)
    assert offline.value.error_code == 404103


def test_c2d_waits_for_an_offline_device(cloud: dpskit.LocalCloud, tmp_path: Path) -> None:
    client, hub = _connected_x509_client(cloud, tmp_path, "sdk-offline-1")
    received: list[Any] = []
    client.on_message_received = received.append
    assert wait_until(
        lambda: granted(cloud, "sdk-offline-1", "devices/sdk-offline-1/messages/devicebound/#")
    ), cloud.format_trace("sdk-offline-1")
    client.disconnect()
    hub.send_c2d("sdk-offline-1", "while you were away")
    # The Python SDK never re-subscribes: the hub keeps its session (clean_session=0).
    client.connect()
    try:
        assert wait_until(lambda: bool(received))
        assert received[0].data == b"while you were away"
    finally:
        client.shutdown()


def test_desired_patches_made_while_offline_reach_the_device(
    cloud: dpskit.LocalCloud, tmp_path: Path
) -> None:
    client, hub = _connected_x509_client(cloud, tmp_path, "sdk-offline-2")
    patches: list[dict[str, Any]] = []
    client.on_twin_desired_properties_patch_received = patches.append
    assert wait_until(
        lambda: any(
            e.kind == "SUBSCRIBE" and "desired" in (e.topic or "")
            for e in cloud.trace_events("sdk-offline-2")
        )
    )
    client.disconnect()
    hub.update_desired("sdk-offline-2", {"interval": 42})
    # Patches go only to connected devices; on reconnect the SDK reads the twin and reports
    # what changed while it was away.
    client.connect()
    try:
        assert wait_until(lambda: any(p.get("interval") == 42 for p in patches))
    finally:
        client.shutdown()


def test_symmetric_key_device_sends_telemetry(cloud: dpskit.LocalCloud) -> None:
    dps = cloud.dps("hub-peer-dps")
    group = dps.create_enrollment_group("sdk-keys", symmetric_key=True)
    assert group.primary_key is not None
    key = dpskit.derive_device_key(group.primary_key, "sdk-sas-1")
    registration = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=dps.device_endpoint,
        registration_id="sdk-sas-1",
        id_scope=dps.id_scope,
        symmetric_key=key,
        server_verification_cert=cloud.trust_pem,
    ).register()
    state = registration.registration_state
    assert state is not None
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=cloud.trust_pem,
    )
    try:
        client.connect()
        client.send_message("plain text")
    finally:
        client.shutdown()
    hub = next(h for h in cloud.hubs() if h.host_name == state.assigned_hub)
    [message] = hub.telemetry("sdk-sas-1")
    assert message.body == b"plain text"
    [device] = [d for d in hub.devices() if d.device_id == "sdk-sas-1"]
    assert device.authentication == "sas"


def test_the_free_tier_quota_stops_the_official_sdk(cloud: dpskit.LocalCloud) -> None:
    """A hub created with ``sku="F1"`` meters the SDK's messages in 0.5 KB blocks: twenty of
    200 KB spend the day's 8,000, and the hub refuses the next one (403002) by closing the
    connection, so the SDK (told not to reconnect) never sees it acknowledged."""
    hub = cloud.create_hub("sdk-free-hub", sku="F1")
    identity = hub.create_device("sdk-quota-dev", symmetric_key=True)
    assert identity.primary_key is not None
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=identity.primary_key,
        hostname=hub.host_name,
        device_id="sdk-quota-dev",
        server_verification_cert=cloud.trust_pem,
        connection_retry=False,
    )
    outcome: list[BaseException | None] = []

    def send_one_more() -> None:
        try:
            client.send_message(Message(b"one more"))  # type: ignore[no-untyped-call]
            outcome.append(None)
        except BaseException as error:  # whatever the SDK raises is the outcome
            outcome.append(error)

    try:
        client.connect()
        for _ in range(20):
            client.send_message(Message(b"x" * 200 * 1024))  # type: ignore[no-untyped-call]
        assert hub.usage().messages_left == 0
        threading.Thread(target=send_one_more, daemon=True).start()
        assert wait_until(lambda: quota_refusals(hub) >= 1)
        assert wait_until(lambda: bool(outcome) or not client.connected)
    finally:
        threading.Thread(target=client.shutdown, daemon=True).start()
    assert None not in outcome, "the refused message was acknowledged"
    assert len(hub.telemetry("sdk-quota-dev")) == 20
    assert hub.usage().messages_used == 8000


def test_the_official_sdk_is_throttled_past_s1_sends(cloud: dpskit.LocalCloud) -> None:
    """S1 takes 100 sends a second and shapes a burst for up to a second: eight SDK clients
    with 40 messages each in flight at once go past it, so the hub drops connections with
    429001 (MQTT has no negative acknowledgement); once the backlog drains the hub takes
    messages again."""
    from azure.iot.device.aio import IoTHubDeviceClient as AsyncClient

    hub = cloud.create_hub("sdk-s1-sends-hub", sku="S1")
    keys = {}
    for i in range(8):
        identity = hub.create_device(f"sdk-burst-{i}", symmetric_key=True)
        assert identity.primary_key is not None
        keys[f"sdk-burst-{i}"] = identity.primary_key

    def make(device_id: str) -> Any:
        return AsyncClient.create_from_symmetric_key(
            symmetric_key=keys[device_id],
            hostname=hub.host_name,
            device_id=device_id,
            server_verification_cert=cloud.trust_pem,
            connection_retry=False,
        )

    async def burst() -> list[bool]:
        clients = [make(device_id) for device_id in keys]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.connect() for c in clients)), 30)
            sends = [
                asyncio.ensure_future(c.send_message(Message(json.dumps({"n": n}))))  # type: ignore[no-untyped-call]
                for c in clients
                for n in range(40)
            ]
            # Until the hub throttles (or every send is acknowledged, which fails below).
            for _ in range(300):
                if all(t.done() for t in sends) or throttled(hub)["d2c_sends"]:
                    break
                await asyncio.sleep(0.1)
            await asyncio.wait(sends, timeout=5)
            for task in sends:
                task.cancel()
            await asyncio.wait(sends, timeout=5)
            return [c.connected for c in clients]
        finally:
            # The SDK's shutdown of a client the hub dropped may not return: bounded.
            await asyncio.wait([asyncio.ensure_future(c.shutdown()) for c in clients], timeout=10)

    connected = asyncio.run(burst())
    assert throttled(hub)["d2c_sends"] >= 1
    assert not all(connected), "the hub throttled but no connection was dropped"

    async def after() -> None:
        client = make("sdk-burst-0")
        try:
            await client.connect()
            await asyncio.wait_for(client.send_message("after the burst"), 30)
        finally:
            await client.shutdown()

    asyncio.run(after())
    assert b"after the burst" in [m.body for m in hub.telemetry("sdk-burst-0")]


def test_the_official_sdk_is_refused_past_s1_new_connections(
    cloud: dpskit.LocalCloud,
) -> None:
    """S1 takes 100 new connections a second: while a burst of dpskit clients spends them, the
    SDK's CONNECT is refused (CONNACK "server unavailable") and it connects once the burst is
    over."""
    hub = cloud.create_hub("sdk-s1-connect-hub", sku="S1")
    crowd = hub.create_device("sdk-crowd", symmetric_key=True)
    device = hub.create_device("sdk-connect-dev", symmetric_key=True)
    assert crowd.primary_key is not None
    assert device.primary_key is not None
    crowd_key = crowd.primary_key
    stop = threading.Event()

    def crowd_connects() -> None:
        async def one() -> None:
            async with dpskit.HubClient.connect(
                f"{hub.host_name}:{cloud.mqtt_port}",
                device_id="sdk-crowd",
                symmetric_key=crowd_key,
                trust=cloud.trust_pem,
            ):
                pass

        async def waves() -> None:
            while not stop.is_set():
                await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)

        asyncio.run(waves())

    crowd_thread = threading.Thread(target=crowd_connects, daemon=True)
    crowd_thread.start()
    refusals: list[BaseException] = []
    try:
        wait_until(lambda: throttled(hub)["connections"] > 0, timeout=30)
        for _ in range(50):
            client = IoTHubDeviceClient.create_from_symmetric_key(
                symmetric_key=device.primary_key,
                hostname=hub.host_name,
                device_id="sdk-connect-dev",
                server_verification_cert=cloud.trust_pem,
                connection_retry=False,
            )
            try:
                client.connect()
            except Exception as error:  # the SDK's own connection failure type
                refusals.append(error)
                break
            finally:
                client.shutdown()
    finally:
        stop.set()
        crowd_thread.join(30)
    assert refusals, "the SDK connected 50 times during a burst past 100 connections a second"
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=device.primary_key,
        hostname=hub.host_name,
        device_id="sdk-connect-dev",
        server_verification_cert=cloud.trust_pem,
    )
    try:
        client.connect()
        client.send_message("after the burst")
    finally:
        client.shutdown()
    assert [m.body for m in hub.telemetry("sdk-connect-dev")] == [b"after the burst"]
