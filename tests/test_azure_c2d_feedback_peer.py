"""Cloud-to-device feedback with the official SDKs as peers, unchanged, against the local cloud.

``azure-iot-hub``'s ``IoTHubRegistryManager.send_c2d_message`` (uamqp, always port 5671)
sends with ``iothub-ack``; an official ``azure-iot-device`` client receives over MQTT (always
port 8883) and completes the message (its PUBACK); the hub's feedback is read two ways:

- over AMQP with uamqp's ``ReceiveClient`` on ``amqps://{hub}/messages/servicebound/feedback``,
  as the az CLI's IoT extension reads it (the extension signs in with SASL PLAIN; this test puts
  the same policy's token on ``$cbs``, the way the emulator authorizes every AMQP link);
- over the hub service API's REST with ``IoTHubHttpRuntimeManager`` (``https://{hub}``, port
  443): the raw answer's headers and body, then the lock token completed or abandoned.

A message to an offline device with a short ``expiryTimeUtc`` leaves ``Expired`` feedback, a
purged queue ``Purged``; lock tokens made up or of another hub are refused (412002).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.iot.hub", reason="the official IoT Hub service SDK is not installed")
pytest.importorskip("azure.iot.device", reason="the official IoT device SDK is not installed")
pytest.importorskip("uamqp", reason="the C AMQP transport is not installed")

import certifi
import uamqp  # type: ignore[import-untyped]
from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import (  # type: ignore[import-untyped]
    IoTHubHttpRuntimeManager,
    IoTHubRegistryManager,
)
from msrest.exceptions import HttpOperationError

import dpskit
from conftest import port_is_free, wait_until

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

KEY = "a2V5LW9mLXNpeHRlZW4tYnl0ZXMtYWFhYWFhYWFhYWFh"
FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dpskit.LocalCloud, Path]]:
    """One cloud on Azure's ports (the SDKs dial no other), trusted by requests and uamqp."""
    for port in (8883, 5671):
        if not port_is_free(port):
            pytest.skip(f"port {port} is taken; the official SDKs cannot dial another port")
    with dpskit.LocalCloud(port=8883, amqp_port=5671) as cloud:
        if cloud.web_port != 443 or cloud.amqp_port != 5671:
            pytest.skip("ports 443 and 5671 cannot both be bound here")
        bundle = tmp_path_factory.mktemp("trust") / "emulator-ca.pem"
        bundle.write_text(cloud.trust_pem)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
            # uamqp's sender in azure-iot-hub trusts certifi's bundle only.
            patch.setattr(certifi, "where", lambda: str(bundle))
            yield cloud, bundle


def _owner(hub: dpskit.Hub) -> tuple[str, str]:
    """The policy name and key of the hub's connection string."""
    fields = dict(part.split("=", 1) for part in hub.connection_string.split(";"))
    return fields["SharedAccessKeyName"], fields["SharedAccessKey"]


def _device(cloud: dpskit.LocalCloud, hub: dpskit.Hub, device_id: str) -> IoTHubDeviceClient:
    hub.create_device(device_id, symmetric_key=True, primary_key=KEY, secondary_key=KEY)
    return IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=KEY,
        hostname=hub.host_name,
        device_id=device_id,
        server_verification_cert=cloud.trust_pem,
        connection_retry=False,
    )


def _received_by_device(
    registry: IoTHubRegistryManager, client: IoTHubDeviceClient, device_id: str, message_id: str
) -> Any:
    """Sends ``message_id`` asking for full feedback; returns it as the device got it (the
    device SDK acknowledges it on receipt: the message is completed)."""
    received: list[Any] = []
    client.on_message_received = received.append
    registry.send_c2d_message(
        device_id,
        f"body of {message_id}",
        {"iothub-ack": "full", "messageId": message_id, "k": "v"},
    )
    assert wait_until(lambda: bool(received)), "the device got nothing"
    return received[0]


def _rest_feedback(runtime: IoTHubHttpRuntimeManager) -> Any:
    """The raw answer to ``GET /messages/serviceBound/feedback``."""
    return runtime.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True)


def _rest_records(runtime: IoTHubHttpRuntimeManager, timeout: float = 10.0) -> tuple[Any, str]:
    """Polls the REST feedback until a message comes: its records and lock token."""
    deadline = time.monotonic() + timeout
    while True:
        answer = _rest_feedback(runtime).response
        if answer.status_code == 200:
            return json.loads(answer.content), answer.headers["ETag"]
        assert answer.status_code == 204, answer.text
        assert time.monotonic() < deadline, "no feedback came"
        time.sleep(0.1)


def test_success_feedback_read_over_amqp_as_the_cli_does_and_over_rest(
    world: tuple[dpskit.LocalCloud, Path],
) -> None:
    cloud, bundle = world
    hub = cloud.create_hub("feedback-peer")
    registry = IoTHubRegistryManager.from_connection_string(hub.connection_string)
    runtime = IoTHubHttpRuntimeManager.from_connection_string(hub.connection_string)
    client = _device(cloud, hub, "fb-dev")
    try:
        client.connect()
        got = _received_by_device(registry, client, "fb-dev", "m-amqp")
        assert got.data == b"body of m-amqp"
        assert got.message_id == "m-amqp"
        assert got.custom_properties == {"k": "v"}
        assert got.ack == "full", "the device is told the ack asked for"

        # (a) uamqp's ReceiveClient on the feedback node.
        source = f"amqps://{hub.host_name}/messages/servicebound/feedback"
        policy, key = _owner(hub)
        auth = uamqp.authentication.SASTokenAuth.from_shared_access_key(
            source, policy, key, verify=str(bundle)
        )
        receiver = uamqp.ReceiveClient(source, auth=auth, timeout=15000, prefetch=1)
        try:
            batch = receiver.receive_message_batch(max_batch_size=1, timeout=15000)
            assert len(batch) == 1, "no feedback over AMQP"
            message = batch[0]
            records = json.loads(b"".join(message.get_data()))
            assert [(r["originalMessageId"], r["statusCode"]) for r in records] == [
                ("m-amqp", "Success")
            ]
            assert records[0]["description"] == "Success"
            assert records[0]["deviceId"] == "fb-dev"
            assert records[0]["deviceGenerationId"]
            assert message.properties.content_type == FEEDBACK_CONTENT_TYPE.encode()
            assert message.properties.user_id == hub.name.encode()
            assert message.properties.message_id
            message.accept()
        finally:
            receiver.close()
        # Accepted: gone for every reader.
        assert _rest_feedback(runtime).response.status_code == 204

        # (b) The REST API, as IoTHubHttpRuntimeManager reads it.
        _received_by_device(registry, client, "fb-dev", "m-rest")
        records, lock = _rest_records(runtime)
        assert [(r["originalMessageId"], r["statusCode"]) for r in records] == [
            ("m-rest", "Success")
        ]
        # Held while locked; abandoned, it comes back with a new lock.
        assert _rest_feedback(runtime).response.status_code == 204
        runtime.abandon_feedback_notification(lock)
        again = _rest_feedback(runtime).response
        assert again.status_code == 200
        assert again.headers["content-type"] == FEEDBACK_CONTENT_TYPE
        assert again.headers["iothub-deliverycount"] == "2"
        assert again.headers["iothub-messageid"]
        assert again.headers["iothub-enqueuedtime"].endswith("Z")
        assert again.headers["ETag"] != lock
        # A lock that no longer holds, or one made up, is refused as IoT Hub refuses it.
        for stale in (lock, "00000000-0000-0000-0000-000000000000"):
            with pytest.raises(HttpOperationError) as refused:
                runtime.complete_feedback_notification(stale)
            assert refused.value.response.status_code == 412
            assert refused.value.response.headers["iothub-errorcode"] == "412002"
        # Another hub's service credential cannot settle this hub's feedback.
        other = cloud.create_hub("feedback-peer-other")
        theirs = IoTHubHttpRuntimeManager.from_connection_string(other.connection_string)
        with pytest.raises(HttpOperationError) as refused:
            theirs.complete_feedback_notification(again.headers["ETag"])
        assert refused.value.response.status_code == 412
        runtime.complete_feedback_notification(again.headers["ETag"])
        assert _rest_feedback(runtime).response.status_code == 204
    finally:
        client.shutdown()
        registry.amqp_svc_client.disconnect_sync()


def test_an_offline_devices_messages_expire_or_are_purged_with_feedback(
    world: tuple[dpskit.LocalCloud, Path],
) -> None:
    cloud, _ = world
    hub = cloud.create_hub("feedback-offline")
    hub.create_device("offline", symmetric_key=True, primary_key=KEY, secondary_key=KEY)
    registry = IoTHubRegistryManager.from_connection_string(hub.connection_string)
    runtime = IoTHubHttpRuntimeManager.from_connection_string(hub.connection_string)
    try:
        soon = int(time.time() * 1000) + 1000
        registry.send_c2d_message(
            "offline",
            "short-lived",
            {"iothub-ack": "full", "messageId": "m-exp", "expiryTimeUtc": soon},
        )
        records, lock = _rest_records(runtime)
        assert [(r["originalMessageId"], r["statusCode"], r["description"]) for r in records] == [
            ("m-exp", "Expired", "Message Expired")
        ]
        runtime.complete_feedback_notification(lock)

        for message_id, ack in (("m-purge-1", "negative"), ("m-purge-2", "positive")):
            registry.send_c2d_message(
                "offline", "waiting", {"iothub-ack": ack, "messageId": message_id}
            )
        purged = registry.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue(
            "offline"
        )
        assert (purged.total_messages_purged, purged.device_id) == (2, "offline")
        records, lock = _rest_records(runtime)
        # A positive ack hears of completions only.
        assert [(r["originalMessageId"], r["statusCode"]) for r in records] == [
            ("m-purge-1", "Purged")
        ]
        runtime.complete_feedback_notification(lock)
    finally:
        registry.amqp_svc_client.disconnect_sync()
