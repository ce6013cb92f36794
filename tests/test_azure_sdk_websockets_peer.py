"""The official Azure device SDK with ``websockets=True``, unchanged, against the local cloud.

Devices behind firewalls reach DPS and IoT Hub with MQTT over WebSockets on port 443
(``wss://{host}/$iothub/websocket``, subprotocol ``mqtt``). The SDK always dials 443 then, so
the module's local cloud serves its web port there; the MQTT port is left free (``port=0``) to
prove no byte goes over 8883. Skipped only where 443 cannot be bound (an unprivileged process
on Linux), which the emulator reports by falling back to another port.
"""

from __future__ import annotations

import json
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
from conftest import granted, wait_until

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

DPS_NAME = "ws-peer-dps"


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as cloud:
        if cloud.web_port != 443:
            pytest.skip(
                "port 443 cannot be bound here (the emulator fell back to "
                f"{cloud.web_port}); the official SDK's WebSockets always dial 443"
            )
        dps = cloud.create_dps(DPS_NAME)
        cloud.link_hub(dps, cloud.create_hub("ws-peer-hub"))
        yield cloud


def _websocket_sessions(cloud: dpskit.LocalCloud, client_id: str) -> list[str]:
    """The CONNECTs the emulator traced for ``client_id`` (the trace is on for it)."""
    return [e.detail for e in cloud.trace_events(client_id) if e.kind == "CONNECT"]


def test_x509_device_provisions_and_uses_its_hub_over_websockets(
    cloud: dpskit.LocalCloud, tmp_path: Path
) -> None:
    dps = cloud.dps(DPS_NAME)
    root = dpskit.CertificateAuthority.create_root("ws x509 Root")
    inter = root.create_intermediate("ws x509 Intermediate")
    dps.prove_possession("ws-x509-ca", inter)
    dps.create_enrollment_group(
        "ws-x509",
        ca_reference="ws-x509-ca",
        initial_twin={"properties": {"desired": {"interval": 5}}},
    )
    files = inter.issue_device("ws-x509-dev").save(tmp_path)
    x509 = X509(  # type: ignore[no-untyped-call]
        cert_file=str(files["chain"]), key_file=str(files["private_key"])
    )
    cloud.trace("ws-x509-dev")
    registration = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.device_host,
        registration_id="ws-x509-dev",
        id_scope=dps.id_scope,
        x509=x509,
        server_verification_cert=cloud.trust_pem,
        websockets=True,
    ).register()
    assert registration.status == "assigned"
    state = registration.registration_state
    assert state is not None
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=cloud.trust_pem,
        websockets=True,
    )
    client.connect()
    hub = next(h for h in cloud.hubs() if h.host_name == state.assigned_hub)
    try:
        message = Message(json.dumps({"temperature": 21.5}))  # type: ignore[no-untyped-call]
        message.custom_properties["unit"] = "C"
        client.send_message(message)  # returns once PUBACKed: stored
        [received] = hub.telemetry("ws-x509-dev")
        assert received.json() == {"temperature": 21.5}
        assert received.properties == {"unit": "C"}

        twin = client.get_twin()
        assert twin["desired"] == {"interval": 5, "$version": 1}
        client.patch_twin_reported_properties({"firmware": "1.0.0"})
        assert hub.get_twin("ws-x509-dev")["properties"]["reported"]["firmware"] == "1.0.0"

        patches: list[dict[str, Any]] = []
        client.on_twin_desired_properties_patch_received = patches.append
        client.on_method_request_received = lambda request: client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"echo": request.payload})
        )
        # The handlers subscribe lazily: wait until the hub has granted the subscriptions.
        methods, desired = "$iothub/methods/POST/#", "$iothub/twin/PATCH/properties/desired/#"
        assert wait_until(lambda: granted(cloud, "ws-x509-dev", methods)), cloud.format_trace(
            "ws-x509-dev"
        )
        assert wait_until(lambda: granted(cloud, "ws-x509-dev", desired)), cloud.format_trace(
            "ws-x509-dev"
        )
        hub.update_desired("ws-x509-dev", {"interval": 10})
        assert wait_until(lambda: bool(patches)), cloud.format_trace("ws-x509-dev")
        assert patches[0] == {"interval": 10, "$version": 2}
        answer = hub.invoke_method("ws-x509-dev", "ping", {"n": 1}, timeout=10)
        assert (answer.status, answer.payload) == (200, {"echo": {"n": 1}})
    finally:
        client.shutdown()
    # Both sessions (DPS, then the hub) presented the device's chain over WebSockets.
    connects = _websocket_sessions(cloud, "ws-x509-dev")
    assert len(connects) >= 2, connects
    assert all("client_certificates=2" in c for c in connects), connects


def test_symmetric_key_device_provisions_and_sends_over_websockets(
    cloud: dpskit.LocalCloud,
) -> None:
    dps = cloud.dps(DPS_NAME)
    group = dps.create_enrollment_group("ws-keys", symmetric_key=True)
    assert group.primary_key is not None
    key = dpskit.derive_device_key(group.primary_key, "ws-key-dev")
    registration = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=dps.device_host,
        registration_id="ws-key-dev",
        id_scope=dps.id_scope,
        symmetric_key=key,
        server_verification_cert=cloud.trust_pem,
        websockets=True,
    ).register()
    assert registration.status == "assigned"
    state = registration.registration_state
    assert state is not None
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=cloud.trust_pem,
        websockets=True,
    )
    client.connect()
    try:
        client.send_message("over websockets")
        hub = next(h for h in cloud.hubs() if h.host_name == state.assigned_hub)
        [received] = hub.telemetry("ws-key-dev")
        assert received.body == b"over websockets"
    finally:
        client.shutdown()
