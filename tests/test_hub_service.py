"""The hub's service side from Python: identities, twins, C2D limits, methods to offline
devices and their 300 s timeout cap, and the realism knobs' argument checks (device traffic
itself is covered by the official SDK peer tests and the Rust tests)."""

from __future__ import annotations

import pytest

import dpskit
from dpskit import _native


@pytest.fixture
def hub(dpskit_cloud: dpskit.LocalCloud) -> dpskit.Hub:
    return dpskit_cloud.create_hub("service-hub")


def test_devices_created_directly(hub: dpskit.Hub, dpskit_ca: object) -> None:
    root = dpskit.CertificateAuthority.create_root("Direct Root")
    device = root.issue_device("direct-x509")
    x509 = hub.create_device("direct-x509", certificate=device, initial_twin={"tags": {"a": 1}})
    assert x509.authentication == "selfSigned"
    assert x509.thumbprint == device.certificate.thumbprint_sha1
    sas = hub.create_device("direct-sas", symmetric_key=True)
    assert sas.authentication == "sas"
    assert sas.primary_key is not None
    assert sas.primary_key not in repr(sas)
    assert {d.device_id for d in hub.devices()} == {"direct-x509", "direct-sas"}
    assert hub.get_twin("direct-x509")["tags"] == {"a": 1}
    with pytest.raises(dpskit.ConfigError):
        hub.create_device("both", certificate=device, symmetric_key=True)
    with pytest.raises(dpskit.CertificateError):
        hub.create_device("bad id!", symmetric_key=True)


def test_twin_service_view_and_versions(hub: dpskit.Hub) -> None:
    hub.create_device("twin-dev", symmetric_key=True)
    twin = hub.update_desired("twin-dev", {"interval": 5, "mode": {"a": 1}})
    assert twin["properties"]["desired"] == {"interval": 5, "mode": {"a": 1}, "$version": 2}
    twin = hub.update_desired("twin-dev", {"mode": None})
    assert twin["properties"]["desired"] == {"interval": 5, "$version": 3}
    twin = hub.update_tags("twin-dev", {"site": "lab"})
    assert twin["tags"] == {"site": "lab"}
    with pytest.raises(dpskit.NotFoundError):
        hub.get_twin("nobody")


def test_identities_and_twins_cross_as_typed_records(hub: dpskit.Hub) -> None:
    hub.create_device(
        "typed-dev",
        symmetric_key=True,
        initial_twin={"tags": {"site": "lab"}, "properties": {"desired": {"rate": 5}}},
    )
    rest, service = hub._cloud._rest, hub._service
    identity = rest.hub_device(service, "typed-dev")
    assert isinstance(identity, _native.HubDeviceRecord)
    assert (identity.device_id, identity.authentication) == ("typed-dev", "sas")
    assert identity.primary_key is not None
    assert len(identity.primary_key) == 44
    assert identity.primary_key not in repr(identity)
    assert (identity.status, identity.connection_state) == ("enabled", "Disconnected")
    assert identity.etag
    twin = rest.hub_twin(service, "typed-dev")
    assert isinstance(twin, _native.ServiceTwinRecord)
    assert twin.device_id == "typed-dev"
    assert twin.tags == {"site": "lab"}
    assert twin.desired is not None
    assert twin.desired["rate"] == 5
    assert twin.reported == {"$version": 1}
    assert twin.etag
    assert twin.version is not None
    # `other` holds, in the twin's order, the members the record has no field for.
    assert list(twin.other) == [
        "deviceEtag",
        "statusUpdateTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "capabilities",
    ]
    assert (twin.other["deviceEtag"], twin.other["capabilities"]) == (
        identity.etag,
        {"iotEdge": False},
    )
    # The dict Hub.get_twin gives is the twin document, built from that record.
    document = hub.get_twin("typed-dev")
    assert {k: document[k] for k in ("deviceId", "etag", "version", "tags", "properties")} == {
        "deviceId": "typed-dev",
        "etag": twin.etag,
        "version": twin.version,
        "tags": {"site": "lab"},
        "properties": {"desired": twin.desired, "reported": {"$version": 1}},
    }
    # The registry members the hub writes into a twin come through too.
    assert (document["status"], document["connectionState"]) == ("enabled", "Disconnected")
    [listed] = rest.hub_device_list(service)
    assert isinstance(listed, _native.HubDeviceRecord)
    assert (listed.device_id, listed.primary_key, listed.etag) == ("typed-dev", None, None)
    [queried] = rest.hub_twins(service)
    assert (queried.authentication_type, queried.connection_state) == ("sas", "Disconnected")


def test_c2d_queue_and_offline_methods(hub: dpskit.Hub) -> None:
    hub.create_device("c2d-dev", symmetric_key=True)
    ids = {hub.send_c2d("c2d-dev", {"n": i}, properties={"i": str(i)}) for i in range(50)}
    assert len(ids) == 50
    with pytest.raises(dpskit.ServiceError) as full:
        hub.send_c2d("c2d-dev", b"one too many")
    assert full.value.error_code == 403004
    assert not isinstance(full.value, dpskit.AuthenticationError)
    with pytest.raises(dpskit.ServiceError) as too_big:
        hub.send_c2d("c2d-dev", b"x" * (64 * 1024 + 1))
    assert too_big.value.error_code == 413001
    with pytest.raises(dpskit.NotFoundError) as offline:
        hub.invoke_method("c2d-dev", "reboot", {"now": True}, timeout=1)
    assert offline.value.error_code == 404103
    # IoT Hub waits at most 300 s for a method's answer: a longer timeout is refused before any
    # request (the device is offline, so a request would have raised NotFoundError).
    with pytest.raises(dpskit.ConfigError, match="at most 300 s"):
        hub.invoke_method("c2d-dev", "reboot", timeout=301)
    assert hub.telemetry("c2d-dev") == []
    assert hub.telemetry().to_pandas().empty


def test_knobs_check_their_arguments(hub: dpskit.Hub) -> None:
    hub.set_latency(0.01)
    hub.set_throttle(connections_per_second=100, messages_per_second=0)
    hub.refuse_connections(0)
    assert hub.drop_connection("nobody") is False
    with pytest.raises(dpskit.ConfigError):
        hub.set_latency(-1)
    with pytest.raises(dpskit.ConfigError):
        hub.set_throttle(messages_per_second=-5)
    with pytest.raises(dpskit.ConfigError):
        hub.refuse_connections(-1)


def test_devices_are_listed_by_query_pages_without_keys(hub: dpskit.Hub, dpskit_ca: object) -> None:
    # Past one query page of 100: the client follows the hub's continuation token.
    ids = [f"listed-{i:03}" for i in range(105)]
    for device_id in ids:
        hub.create_device(device_id, symmetric_key=True)
    device = dpskit.CertificateAuthority.create_root("List Root").issue_device("listed-x509")
    hub.create_device("listed-x509", certificate=device)
    listed = hub.devices()
    assert [d.device_id for d in listed] == [*ids, "listed-x509"]
    by_id = {d.device_id: d for d in listed}
    assert by_id["listed-x509"].authentication == "selfSigned"
    assert by_id["listed-x509"].thumbprint == device.certificate.thumbprint_sha1
    assert by_id["listed-000"].authentication == "sas"
    assert by_id["listed-000"].connection_state == "Disconnected"
    # The query carries no keys (a read per device would have them); device() reads them.
    assert all(d.primary_key is None and d.secondary_key is None for d in listed)
    assert hub.device("listed-000").primary_key is not None


def test_queries_select_twins_by_tags_and_properties(hub: dpskit.Hub) -> None:
    for i, site in enumerate(["lab", "plant", "lab"]):
        hub.create_device(f"query-{i}", symmetric_key=True)
        hub.update_tags(f"query-{i}", {"site": site, "floor": i})
    hub.update_desired("query-2", {"mode": "eco"})
    lab = hub.query("SELECT * FROM devices WHERE tags.site = 'lab'")
    assert [t["deviceId"] for t in lab] == ["query-0", "query-2"]
    assert lab[0]["status"] == "enabled"
    assert lab[0]["authenticationType"] == "sas"
    either = hub.query(
        "SELECT * FROM devices WHERE tags.floor >= 1 AND "
        "(properties.desired.mode = 'eco' OR tags.site = 'plant')"
    )
    assert [t["deviceId"] for t in either] == ["query-1", "query-2"]
    assert len(hub.query("SELECT * FROM devices")) == 3
    with pytest.raises(dpskit.ServiceError) as refused:
        hub.query("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'query')")
    assert (refused.value.status, refused.value.error_code) == (400, 400004)
    assert "STARTSWITH" in refused.value.message
