"""The official IoT Hub service SDK (``azure-iot-hub`` 2.7), unchanged, against the local cloud.

``IoTHubRegistryManager.from_connection_string(hub.connection_string)`` calls
``https://<hub host>/...`` as it would on Azure, trusting the emulator's CA through
``REQUESTS_CA_BUNDLE``: identities (X.509 thumbprints, certificate authority, SAS) created, read,
listed, updated, disabled and deleted with etags; twins read, patched and replaced as a
connected official device (``azure-iot-device``) sees them; direct methods answered by it, and
one it leaves unanswered; queries with ``WHERE`` on tags and reported properties, paged one
twin at a time; the registry and service statistics. The device SDK dials port 8883 only and
the service SDK port 443 (``HostName`` carries no port when the cloud serves 443), so the
module shares one ``LocalCloud(port=8883)`` that could bind 443.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.iot.hub", reason="the official IoT Hub service SDK is not installed")
pytest.importorskip("azure.iot.device", reason="the official IoT device SDK is not installed")

from azure.iot.device import X509, IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubRegistryManager  # type: ignore[import-untyped]
from azure.iot.hub.models import (  # type: ignore[import-untyped]
    CloudToDeviceMethod,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from msrest.exceptions import HttpOperationError

import dpskit
from conftest import granted, port_is_free, wait_until

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

KEY = "a2V5LW9mLXNpeHRlZW4tYnl0ZXMtYWFhYWFhYWFhYWFh"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dpskit.LocalCloud]:
    if not port_is_free(8883):
        pytest.skip("port 8883 is taken; the official device SDK cannot dial another port")
    with dpskit.LocalCloud(port=8883) as cloud:
        if cloud.web_port != 443:
            pytest.skip(
                "port 443 cannot be bound here (the emulator fell back to "
                f"{cloud.web_port}); this module checks the service SDK on Azure's own port"
            )
        bundle = tmp_path_factory.mktemp("trust") / "emulator-ca.pem"
        bundle.write_text(cloud.trust_pem)
        before = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
        try:
            yield cloud
        finally:
            if before is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = before


def _registry(hub: dpskit.Hub) -> IoTHubRegistryManager:
    assert "HostName=" + hub.host_name + ";" in hub.connection_string
    return IoTHubRegistryManager.from_connection_string(hub.connection_string)


def _refused(call: Callable[[], object]) -> tuple[int, int]:
    """The status and IoT Hub error code of a call the service refuses."""
    with pytest.raises(HttpOperationError) as refused:
        call()
    response = refused.value.response
    return response.status_code, int(response.headers["iothub-errorcode"])


def _x509_device(
    cloud: dpskit.LocalCloud, tmp_path: Path, root: dpskit.CertificateAuthority, device_id: str
) -> tuple[X509, str]:
    """A device certificate from ``root`` as the device SDK takes it, and its thumbprint."""
    device = root.issue_device(device_id)
    files = device.save(tmp_path)
    x509 = X509(  # type: ignore[no-untyped-call]
        cert_file=str(files["chain"]), key_file=str(files["private_key"])
    )
    return x509, device.certificate.thumbprint_sha1


def test_x509_identities_created_read_listed_updated_and_deleted_with_etags(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = cloud.create_hub("svc-peer-registry")
    registry = _registry(hub)
    primary, secondary = "A1" * 20, "b2" * 32  # SHA-1 and SHA-256 thumbprints

    created = registry.create_device_with_x509("x509-dev", primary, secondary, "enabled")
    assert created.authentication.type == "selfSigned"
    assert created.authentication.x509_thumbprint.primary_thumbprint == primary
    assert created.authentication.x509_thumbprint.secondary_thumbprint == secondary.upper()
    assert (created.status, created.connection_state) == ("enabled", "Disconnected")
    assert created.capabilities.iot_edge is False
    assert created.generation_id
    assert created.etag

    read = registry.get_device("x509-dev")
    assert (read.device_id, read.etag, read.generation_id) == (
        "x509-dev",
        created.etag,
        created.generation_id,
    )
    authority = registry.create_device_with_certificate_authority("ca-dev", "enabled")
    assert authority.authentication.type == "certificateAuthority"
    sas = registry.create_device_with_sas("sas-dev", KEY, KEY, "enabled", iot_edge=True)
    assert sas.authentication.symmetric_key.primary_key == KEY
    assert sas.capabilities.iot_edge is True
    # Creating an id that exists is a conflict, not a silent replace.
    assert _refused(lambda: registry.create_device_with_sas("sas-dev", KEY, KEY, "enabled")) == (
        409,
        409001,
    )

    assert [d.device_id for d in registry.get_devices()] == ["ca-dev", "sas-dev", "x509-dev"]
    assert [d.device_id for d in registry.get_devices(max_number_of_devices=2)] == [
        "ca-dev",
        "sas-dev",
    ]

    updated = registry.update_device_with_x509(
        "x509-dev", created.etag, primary, None, "disabled", status_reason="maintenance"
    )
    assert (updated.status, updated.status_reason) == ("disabled", "maintenance")
    assert updated.authentication.x509_thumbprint.secondary_thumbprint is None
    assert updated.etag != created.etag
    assert updated.generation_id == created.generation_id
    assert updated.status_updated_time.year > 1
    # The etag read before the update is stale now: nothing changes.
    assert _refused(
        lambda: registry.update_device_with_x509("x509-dev", created.etag, primary, None, "enabled")
    ) == (412, 412001)
    assert registry.get_device("x509-dev").status == "disabled"

    statistics = registry.get_device_registry_statistics()
    assert (
        statistics.total_device_count,
        statistics.enabled_device_count,
        statistics.disabled_device_count,
    ) == (3, 2, 1)
    assert registry.get_service_statistics().connected_device_count == 0

    assert _refused(lambda: registry.delete_device("x509-dev", created.etag)) == (412, 412001)
    registry.delete_device("x509-dev", updated.etag)
    registry.delete_device("ca-dev")
    assert _refused(lambda: registry.get_device("x509-dev")) == (404, 404001)
    assert [d.device_id for d in registry.get_devices()] == ["sas-dev"]
    # A device created again under the same id is another generation.
    again = registry.create_device_with_x509("x509-dev", primary, None, "enabled")
    assert again.generation_id != created.generation_id


def test_twin_patch_replace_and_methods_seen_by_a_connected_official_device(
    cloud: dpskit.LocalCloud, tmp_path: Path
) -> None:
    hub = cloud.create_hub("svc-peer-twins")
    registry = _registry(hub)
    root = dpskit.CertificateAuthority.create_root("Service Peer Root")
    x509, thumbprint = _x509_device(cloud, tmp_path, root, "twin-dev")
    registry.create_device_with_x509("twin-dev", thumbprint, None, "enabled")
    cloud.trace("twin-dev")
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=hub.host_name,
        device_id="twin-dev",
        server_verification_cert=cloud.trust_pem,
        connection_retry=False,
    )
    patches: list[dict[str, Any]] = []

    def answer(request: Any) -> None:
        if request.name == "reboot":  # "hang" is left unanswered
            client.send_method_response(
                MethodResponse.create_from_method_request(request, 200, {"echo": request.payload})
            )

    try:
        client.connect()
        client.on_twin_desired_properties_patch_received = patches.append
        client.on_method_request_received = answer
        for topic in ("$iothub/methods/POST/#", "$iothub/twin/PATCH/properties/desired/#"):
            in_force = functools.partial(granted, cloud, "twin-dev", topic)
            assert wait_until(in_force), cloud.format_trace("twin-dev")
        assert registry.get_service_statistics().connected_device_count == 1
        assert registry.get_device("twin-dev").connection_state == "Connected"

        first = registry.get_twin("twin-dev")
        assert (first.tags, first.connection_state, first.authentication_type) == (
            {},
            "Connected",
            "selfSigned",
        )
        assert first.x509_thumbprint.primary_thumbprint == thumbprint
        patch = Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"interval": 10}))
        patched = registry.update_twin("twin-dev", patch, first.etag)
        assert patched.tags == {"site": "lab"}
        assert wait_until(lambda: len(patches) == 1)
        assert patches[0] == {"interval": 10, "$version": 2}

        client.patch_twin_reported_properties({"firmware": "1.0.0"})
        read = registry.get_twin("twin-dev")
        assert read.properties.reported["firmware"] == "1.0.0"
        assert read.properties.desired["interval"] == 10

        replacement = Twin(tags={"floor": 3}, properties=TwinProperties(desired={"mode": "eco"}))
        replaced = registry.replace_twin("twin-dev", replacement, read.etag)
        assert replaced.tags == {"floor": 3}
        assert replaced.properties.desired == {"mode": "eco", "$version": 3}
        assert replaced.properties.reported["firmware"] == "1.0.0"
        # The device learns the replacement as a patch: the removed key as null.
        assert wait_until(lambda: len(patches) == 2)
        assert patches[1] == {"mode": "eco", "interval": None, "$version": 3}
        assert client.get_twin()["desired"] == {"mode": "eco", "$version": 3}
        # The etag read before the replace is stale: 412, nothing changed.
        assert _refused(lambda: registry.replace_twin("twin-dev", patch, read.etag)) == (
            412,
            412001,
        )
        assert _refused(lambda: registry.update_twin("twin-dev", patch, first.etag)) == (
            412,
            412001,
        )
        assert registry.get_twin("twin-dev").tags == {"floor": 3}

        result = registry.invoke_device_method(
            "twin-dev",
            CloudToDeviceMethod(
                method_name="reboot", payload={"delay": 1}, response_timeout_in_seconds=10
            ),
        )
        assert (result.status, result.payload) == (200, {"echo": {"delay": 1}})
        unanswered = CloudToDeviceMethod(method_name="hang", response_timeout_in_seconds=5)
        assert _refused(lambda: registry.invoke_device_method("twin-dev", unanswered)) == (
            504,
            504101,
        )

        # Disabled, the device is disconnected and may not come back.
        etag = registry.get_device("twin-dev").etag
        registry.update_device_with_x509("twin-dev", etag, thumbprint, None, "disabled")
        assert wait_until(lambda: not client.connected)
        # The SDK's refusal type varies by version; the trace says why.
        with pytest.raises(Exception):  # noqa: B017, PT011
            client.connect()
        assert any("disabled" in e.detail for e in cloud.trace_events("twin-dev")), (
            cloud.format_trace("twin-dev")
        )
    finally:
        client.shutdown()
    offline = CloudToDeviceMethod(method_name="reboot", response_timeout_in_seconds=5)
    assert _refused(lambda: registry.invoke_device_method("twin-dev", offline)) == (404, 404103)


def test_queries_filter_on_tags_and_reported_properties_a_page_at_a_time(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = cloud.create_hub("svc-peer-query")
    registry = _registry(hub)
    batteries = {"q-1": 80, "q-2": 20, "q-3": 35, "q-4": 10}
    sites = {"q-1": "lab", "q-2": "lab", "q-3": "lab", "q-4": "plant"}
    for device_id, battery in batteries.items():
        registry.create_device_with_sas(device_id, KEY, KEY, "enabled")
        registry.update_twin(device_id, Twin(tags={"site": sites[device_id]}))
        client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=KEY,
            hostname=hub.host_name,
            device_id=device_id,
            server_verification_cert=cloud.trust_pem,
            connection_retry=False,
        )
        try:
            client.connect()
            client.patch_twin_reported_properties({"battery": battery})
        finally:
            client.shutdown()
    registry.create_device_with_sas("q-5", KEY, KEY, "enabled")  # no tags, nothing reported

    def ids(query: str) -> list[str]:
        result = registry.query_iot_hub(QuerySpecification(query=query))
        assert result.type == "twin"
        assert result.continuation_token is None
        return [twin.device_id for twin in result.items]

    assert ids("SELECT * FROM devices") == ["q-1", "q-2", "q-3", "q-4", "q-5"]
    assert ids("SELECT * FROM devices WHERE tags.site = 'lab'") == ["q-1", "q-2", "q-3"]
    assert ids(
        "SELECT * FROM devices WHERE tags.site = 'lab' AND properties.reported.battery < 50"
    ) == ["q-2", "q-3"]
    assert ids(
        "SELECT * FROM devices WHERE properties.reported.battery >= 80 OR tags.site = 'plant'"
    ) == ["q-1", "q-4"]
    assert ids("SELECT * FROM devices WHERE NOT (tags.site = 'lab')") == ["q-4"]
    assert ids("SELECT * FROM devices WHERE deviceId = 'q-5'") == ["q-5"]
    assert ids("SELECT * FROM devices WHERE NOT IS_DEFINED(tags.site)") == ["q-5"]

    pages: list[list[str]] = []
    token = None
    while True:
        result = registry.query_iot_hub(
            QuerySpecification(query="SELECT * FROM devices WHERE tags.site = 'lab'"), token, 1
        )
        pages.append([twin.device_id for twin in result.items])
        token = result.continuation_token
        if token is None:
            break
    assert pages == [["q-1"], ["q-2"], ["q-3"]]

    # What the emulator does not understand is refused, never run without the clause.
    for query in (
        "SELECT deviceId FROM devices",
        "SELECT * FROM devices WHERE deviceId IN ['q-1']",
        "SELECT * FROM devices WHERE tags.site = ",
    ):
        run = functools.partial(registry.query_iot_hub, QuerySpecification(query=query))
        assert _refused(run) == (400, 400004)
