"""Custom allocation: a Python callable and a real HTTP webhook decide where devices go, with
Azure's AllocationRequest / AllocationResponse JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

import dpskit


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        dps = cloud.create_dps("dps")
        for name in ("hub-a", "hub-b"):
            cloud.link_hub(dps, cloud.create_hub(name))
        yield cloud


@pytest.fixture
def root(cloud: dpskit.LocalCloud) -> dpskit.CertificateAuthority:
    root = dpskit.CertificateAuthority.create_root("Custom Allocation Root")
    cloud.dps("dps").prove_possession("root", root)
    return root


def test_a_callable_decides_and_returns_twin_and_payload(
    cloud: dpskit.LocalCloud, root: dpskit.CertificateAuthority
) -> None:
    dps, hub_b = cloud.dps("dps"), cloud.hub("hub-b")
    requests: list[dict[str, Any]] = []

    def allocate(request: dict[str, Any]) -> dict[str, Any]:
        requests.append(request)
        device = request["deviceRuntimeContext"]["registrationId"]
        return {
            "iotHubHostName": hub_b.host_name,
            "initialTwin": {"tags": {"line": "B"}},
            "payload": {"welcome": device},
        }

    group = dps.create_enrollment_group("custom", ca_reference="root", custom_allocation=allocate)
    assert group.allocation_policy == "custom"
    assert group.custom_allocation_url == "python:dps/group/custom"
    [outcome] = dpskit.provision_devices(dps, [root.issue_device("toaster-1")])
    assert outcome.ok, outcome.error
    assert outcome.assigned_hub == hub_b.host_name
    request = requests[0]
    assert request["enrollmentGroup"]["enrollmentGroupId"] == "custom"
    assert request["deviceRuntimeContext"] == {"registrationId": "toaster-1", "x509": {}}
    assert sorted(request["linkedHubs"]) == sorted(h.host_name for h in cloud.hubs())
    [record] = dps.registrations("custom")
    assert record.payload == {"welcome": "toaster-1"}
    [device] = hub_b.devices()
    # The twin the allocator returned is the device's initial twin in the hub.
    assert hub_b.get_twin(device.device_id)["tags"] == {"line": "B"}


def test_a_hub_name_is_enough_and_bad_answers_fail_the_registration(
    cloud: dpskit.LocalCloud, root: dpskit.CertificateAuthority
) -> None:
    dps, hub_a = cloud.dps("dps"), cloud.hub("hub-a")
    dps.create_enrollment_group(
        "custom", ca_reference="root", custom_allocation=lambda request: hub_a.host_name
    )
    [ok] = dpskit.provision_devices(dps, [root.issue_device("kettle-1")])
    assert ok.assigned_hub == hub_a.host_name

    dps.create_enrollment_group(
        "custom", ca_reference="root", custom_allocation=lambda request: "not-linked.example"
    )
    [refused] = dpskit.provision_devices(dps, [root.issue_device("kettle-2")])
    assert not refused.ok
    assert refused.error_code == 400209
    assert refused.error is not None
    assert "not a hub linked" in refused.error

    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("allocator bug")

    dps.create_enrollment_group("custom", ca_reference="root", custom_allocation=broken)
    [failed] = dpskit.provision_devices(dps, [root.issue_device("kettle-3")])
    assert failed.error is not None
    assert "allocator bug" in failed.error


class _Webhook(BaseHTTPRequestHandler):
    """Answers like an Azure Function: the last linked hub, and echoes the device payload."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        if self.path == "/fail":
            self.send_response(404)
            self.end_headers()
            return
        answer = json.dumps({"iotHubHostname": body["linkedHubs"][-1], "payload": {"ok": True}})
        data = answer.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


def test_an_http_webhook_decides(
    cloud: dpskit.LocalCloud, root: dpskit.CertificateAuthority
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dps = cloud.dps("dps")
        url = f"http://127.0.0.1:{server.server_port}"
        dps.create_enrollment_group(
            "hook", ca_reference="root", custom_allocation=f"{url}/allocate"
        )
        [outcome] = dpskit.provision_devices(dps, [root.issue_device("fridge-1")])
        assert outcome.ok, outcome.error
        last_linked = _Webhook.received[-1]["linkedHubs"][-1]
        assert outcome.assigned_hub == last_linked
        dps.create_enrollment_group("hook", ca_reference="root", custom_allocation=f"{url}/fail")
        [failed] = dpskit.provision_devices(dps, [root.issue_device("fridge-2")])
        assert failed.error is not None
        assert "Custom allocation failed with status code: 404" in failed.error
    finally:
        server.shutdown()
