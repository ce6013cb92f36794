"""The local cloud's Python API (``dpskit.LocalCloud`` and friends), without any device SDK.

Every test starts its own emulator on a free port (``port=0``), so these tests never need 8883
and never see each other's state. The official SDK's end-to-end tests live in
``test_azure_sdk_peer.py``.
"""

from __future__ import annotations

import base64
import math
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit
from dpskit import _native

# Azure's ID scope: "0ne" followed by 8 upper-case hex digits.
ID_SCOPE = re.compile(r"0ne[0-9A-F]{8}")


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    """A fresh local cloud on a free port, stopped after the test."""
    with dpskit.LocalCloud(port=0) as running:
        yield running


@pytest.fixture
def dps(cloud: dpskit.LocalCloud) -> dpskit.Dps:
    """A DPS instance of :func:`cloud`."""
    return cloud.create_dps("dps-test")


# -- a minimal MQTT 3.1.1 client: enough to produce trace events without any SDK -------------


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def mqtt_connect(cloud: dpskit.LocalCloud, client_id: str, username: str) -> bytes:
    """Send a CONNECT (no password, no client certificate) over TLS; return the CONNACK."""
    # Protocol "MQTT" level 4, flags: username + clean session, keep-alive 60 s.
    variable = _mqtt_string("MQTT") + bytes([4, 0x82]) + (60).to_bytes(2, "big")
    body = variable + _mqtt_string(client_id) + _mqtt_string(username)
    packet = bytes([0x10]) + _remaining_length(len(body)) + body
    context = ssl.create_default_context(cadata=cloud.trust_pem)
    with (
        socket.create_connection((cloud.host, cloud.mqtt_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=cloud.host) as tls,
    ):
        tls.sendall(packet)
        connack = b""
        while len(connack) < 4:
            chunk = tls.recv(4 - len(connack))
            if not chunk:
                break
            connack += chunk
    return connack


# -- lifecycle ----------------------------------------------------------------------------


def test_context_manager_runs_then_stops_the_cloud() -> None:
    with dpskit.LocalCloud(port=0) as cloud:
        assert cloud.is_running
        # port=0 asks the OS for a free port; the cloud reports the one it got.
        assert cloud.mqtt_port > 0
        assert cloud.host == "127.0.0.1"
        text = repr(cloud)
        assert "running" in text
        assert f"127.0.0.1:{cloud.mqtt_port}" in text
        assert str(cloud.data_dir) in text
    assert not cloud.is_running
    assert "stopped" in repr(cloud)


def test_the_cloud_accepts_tls_connections_on_its_port(cloud: dpskit.LocalCloud) -> None:
    context = ssl.create_default_context(cadata=cloud.trust_pem)
    with (
        socket.create_connection((cloud.host, cloud.mqtt_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=cloud.host) as tls,
    ):
        # The handshake verified the server against trust_pem (and its IP address).
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_stop_is_idempotent_and_later_calls_raise() -> None:
    cloud = dpskit.LocalCloud(port=0)
    dps = cloud.create_dps("before-stop")
    cloud.stop()
    cloud.stop()  # a second stop is harmless
    assert not cloud.is_running
    with pytest.raises(dpskit.EmulatorError, match="stopped"):
        cloud.create_hub("after-stop")
    with pytest.raises(dpskit.EmulatorError):
        cloud.hubs()
    with pytest.raises(dpskit.EmulatorError):
        cloud.dps("before-stop")
    # Objects handed out before the stop fail the same way instead of reading stale state.
    with pytest.raises(dpskit.EmulatorError):
        dps.registrations()


def test_a_temporary_data_dir_is_deleted_on_stop() -> None:
    cloud = dpskit.LocalCloud(port=0)
    folder = cloud.data_dir
    assert folder.is_dir()
    cloud.stop()
    # The class documents "a temporary folder deleted on stop" (not on garbage collection).
    assert not folder.exists()


def test_a_port_in_use_is_reported() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(dpskit.EmulatorError, match=str(port)):
            dpskit.LocalCloud(port=port)


# -- hubs and DPS instances ------------------------------------------------------------------


def test_hubs_get_distinct_loopback_addresses(cloud: dpskit.LocalCloud) -> None:
    first = cloud.create_hub("hub-one")
    second = cloud.create_hub("hub-two", "northeurope")
    third = cloud.create_hub("hub-three")
    # 127.0.0.1 is the DPS; hubs take the following addresses, so each has its own host name.
    assert [first.host_name, second.host_name, third.host_name] == [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
    ]
    assert second.location == "northeurope"
    assert first.location == "westeurope"
    again = cloud.hub("hub-two")
    assert (again.name, again.host_name, again.location) == ("hub-two", "127.0.0.3", "northeurope")
    assert sorted(h.name for h in cloud.hubs()) == ["hub-one", "hub-three", "hub-two"]
    assert first.devices() == []
    # The web port is named when 443 could not be bound (another process holds it).
    host = "127.0.0.2" if cloud.web_port == 443 else f"127.0.0.2:{cloud.web_port}"
    assert first.connection_string.startswith(
        f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey="
    )


def test_dps_instances_get_fresh_id_scopes(cloud: dpskit.LocalCloud) -> None:
    first = cloud.create_dps("dps-one")
    second = cloud.create_dps("dps-two", "eastus")
    assert ID_SCOPE.fullmatch(first.id_scope), first.id_scope
    assert ID_SCOPE.fullmatch(second.id_scope), second.id_scope
    assert first.id_scope != second.id_scope
    assert cloud.dps("dps-one").id_scope == first.id_scope
    assert second.location == "eastus"
    assert sorted(d.name for d in cloud.all_dps()) == ["dps-one", "dps-two"]
    # Not on 8883, so the endpoint carries the port (the form dpskit's own client accepts).
    assert first.device_endpoint == f"127.0.0.1:{cloud.mqtt_port}"
    assert (first.device_host, first.device_port) == ("127.0.0.1", cloud.mqtt_port)
    # The service API is on the DPS's own address, on the web port: named when not 443.
    service_host = "127.0.0.1" if cloud.web_port == 443 else f"127.0.0.1:{cloud.web_port}"
    assert first.service_host == service_host
    assert first.service_connection_string.startswith(
        f"HostName={service_host};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="
    )
    assert first.linked_hubs() == []
    assert "dps-one" in repr(first)
    assert first.id_scope in repr(first)


def test_creating_again_returns_the_existing_resource(cloud: dpskit.LocalCloud) -> None:
    # ARM's PUT is create-or-update: a notebook cell run twice must not fail or duplicate.
    hub = cloud.create_hub("twin")
    dps = cloud.create_dps("twin")  # hubs and DPS instances have separate namespaces
    assert cloud.create_hub("twin").host_name == hub.host_name
    assert cloud.create_dps("twin").id_scope == dps.id_scope
    assert len(cloud.hubs()) == 1
    assert len(cloud.all_dps()) == 1


def test_unknown_names_are_not_found(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    with pytest.raises(dpskit.NotFoundError) as error:
        cloud.hub("nowhere")
    assert error.value.status == 404
    with pytest.raises(dpskit.NotFoundError):
        cloud.dps("nowhere")
    with pytest.raises(dpskit.NotFoundError):
        cloud.link_hub(dps, "nowhere")
    with pytest.raises(dpskit.NotFoundError):
        cloud.link_hub("nowhere", cloud.create_hub("real-hub"))
    with pytest.raises(dpskit.NotFoundError):
        dps.ca_certificate("nowhere")
    with pytest.raises(dpskit.NotFoundError):
        dps.enrollment_group("nowhere")
    with pytest.raises(dpskit.NotFoundError):
        dps.update_enrollment_group("nowhere", provisioning_status="disabled")
    with pytest.raises(dpskit.NotFoundError):
        dps.enrollment("nowhere")
    with pytest.raises(dpskit.NotFoundError):
        dps.delete_registration("nowhere")


# Names Azure refuses for both: hubs take 3-50 letters, digits and hyphens, DPS 3-64, neither
# ending with a hyphen. Dots and underscores used to pass locally and fail on Azure.
@pytest.mark.parametrize(
    "name", ["", "ab", "with space", "a/b", "é-hub", "my_hub", "my.hub", "hub-", "x" * 65]
)
def test_invalid_names_are_refused(cloud: dpskit.LocalCloud, name: str) -> None:
    with pytest.raises(dpskit.ConfigError, match="invalid IoT hub name"):
        cloud.create_hub(name)
    with pytest.raises(dpskit.ConfigError, match="invalid provisioning service name"):
        cloud.create_dps(name)
    # With a host name the hub goes straight to the emulator, which applies the same rule.
    with pytest.raises(dpskit.ConfigError):
        cloud.create_hub(name, host_name="127.0.0.99")
    assert cloud.hubs() == []
    assert cloud.all_dps() == []


def test_the_longest_valid_names_are_accepted(cloud: dpskit.LocalCloud) -> None:
    assert cloud.create_hub("x" * 50).name == "x" * 50
    with pytest.raises(dpskit.ConfigError, match="51 characters"):
        cloud.create_hub("x" * 51)
    assert cloud.create_dps("y" * 64).name == "y" * 64


# -- links -----------------------------------------------------------------------------------


def test_link_hub_and_linked_hubs(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    west = cloud.create_hub("hub-west")
    north = cloud.create_hub("hub-north", "northeurope")
    link = cloud.link_hub(dps, west)
    assert link == dpskit.LinkedHub(
        hub="hub-west",
        host_name=west.host_name,
        allocation_weight=1,
        apply_allocation_policy=True,
        location="westeurope",  # the hub's own location by default
    )
    cloud.link_hub(dps.name, north.name, allocation_weight=3)
    assert {(h.hub, h.allocation_weight, h.location) for h in dps.linked_hubs()} == {
        ("hub-west", 1, "westeurope"),
        ("hub-north", 3, "northeurope"),
    }
    # Linking again updates the link instead of adding a second one.
    updated = cloud.link_hub(
        dps, west, allocation_weight=5, apply_allocation_policy=False, location="eastus"
    )
    assert (updated.allocation_weight, updated.apply_allocation_policy, updated.location) == (
        5,
        False,
        "eastus",
    )
    links = {h.hub: h for h in dps.linked_hubs()}
    assert len(links) == 2
    assert links["hub-west"] == updated


def test_negative_allocation_weight_is_refused(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    hub = cloud.create_hub("hub-weight")
    with pytest.raises(dpskit.ConfigError):
        cloud.link_hub(dps, hub, allocation_weight=-1)
    assert dps.linked_hubs() == []


# -- CA certificates and proof of possession ------------------------------------------------


def test_proof_of_possession_step_by_step(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority, other_root: dpskit.CertificateAuthority
) -> None:
    uploaded = dps.upload_ca_certificate("root", ec_root)
    assert uploaded.name == "root"
    assert not uploaded.is_verified
    assert uploaded.verification_code is None
    assert uploaded.certificate == ec_root.certificate
    assert uploaded.subject == ec_root.certificate.subject
    assert uploaded.thumbprint == ec_root.certificate.thumbprint_sha1
    assert uploaded.expiry == ec_root.certificate.not_after

    code = dps.generate_verification_code("root")
    assert re.fullmatch(r"[0-9A-F]{16,}", code), code
    pending = dps.ca_certificate("root")
    # As on Azure, only the generateVerificationCode answer carries the code.
    assert pending.verification_code is None
    assert pending.etag != uploaded.etag  # every change moves the etag
    assert not pending.is_verified

    # A verification certificate with the right code but signed by another key is refused.
    with pytest.raises(dpskit.ServiceError) as wrong_key:
        dps.verify_certificate("root", other_root.create_verification_certificate(code))
    assert wrong_key.value.status == 400
    assert "not signed by the private key" in str(wrong_key.value)
    assert not dps.ca_certificate("root").is_verified

    proof = ec_root.create_verification_certificate(code)
    verified = dps.verify_certificate("root", proof)
    assert verified.is_verified
    assert verified.verification_code is None
    assert verified.etag not in {uploaded.etag, pending.etag}
    assert dps.ca_certificate("root").is_verified

    # The code is single-use: the same proof does not verify a second time.
    with pytest.raises(dpskit.ServiceError) as used_up:
        dps.verify_certificate("root", proof)
    assert used_up.value.status == 400


def test_a_verification_code_is_replaced_by_the_next_one(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority
) -> None:
    dps.upload_ca_certificate("root", ec_root)
    first = dps.generate_verification_code("root")
    second = dps.generate_verification_code("root")
    assert first != second
    with pytest.raises(dpskit.ServiceError) as stale:
        dps.verify_certificate("root", ec_root.create_verification_certificate(first))
    assert stale.value.status == 400
    assert dps.verify_certificate(
        "root", ec_root.create_verification_certificate(second)
    ).is_verified


def test_prove_possession_in_one_call_for_root_and_intermediate(
    dps: dpskit.Dps,
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
) -> None:
    root = dps.prove_possession("root", ec_root)
    inter = dps.prove_possession("inter", ec_intermediate)
    assert root.is_verified
    assert inter.is_verified
    assert inter.certificate == ec_intermediate.certificate
    assert {(c.name, c.is_verified) for c in dps.ca_certificates()} == {
        ("root", True),
        ("inter", True),
    }
    # Already verified: nothing to do, nothing changes.
    assert dps.prove_possession("inter", ec_intermediate).etag == inter.etag


def test_prove_possession_refuses_a_name_holding_another_certificate(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority, other_root: dpskit.CertificateAuthority
) -> None:
    proven = dps.prove_possession("root", ec_root)
    # Azure refuses to replace a certificate without its etag (412): so does the one-call
    # proof, instead of replacing the verified CA behind the caller's back.
    with pytest.raises(dpskit.ConflictError) as refused:
        dps.prove_possession("root", other_root)
    assert refused.value.status == 412
    assert proven.thumbprint in str(refused.value)
    kept = dps.ca_certificate("root")
    assert (kept.certificate, kept.etag, kept.is_verified) == (
        ec_root.certificate,
        proven.etag,
        True,
    )


def test_upload_as_verified_skips_proof_of_possession(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority
) -> None:
    info = dps.upload_ca_certificate("trusted", ec_root.certificate_pem, verified=True)
    assert info.is_verified
    assert info.thumbprint == ec_root.certificate.thumbprint_sha1
    # DER bytes and Certificate objects are accepted as well as PEM text and CAs.
    again = dps.upload_ca_certificate("as-der", ec_root.certificate_der, verified=True)
    assert again.certificate == ec_root.certificate


def test_replacing_a_ca_certificate_resets_verification(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority, other_root: dpskit.CertificateAuthority
) -> None:
    dps.prove_possession("root", ec_root)
    replaced = dps.upload_ca_certificate("root", other_root)
    assert replaced.certificate == other_root.certificate
    assert not replaced.is_verified


def test_delete_ca_certificate(dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority) -> None:
    dps.upload_ca_certificate("root", ec_root)
    dps.delete_ca_certificate("root")
    assert dps.ca_certificates() == []
    with pytest.raises(dpskit.NotFoundError):
        dps.ca_certificate("root")


# -- enrollments -----------------------------------------------------------------------------


def test_enrollment_group_on_a_ca_reference(
    dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority
) -> None:
    dps.prove_possession("root", ec_root)
    group = dps.create_enrollment_group("by-reference", ca_reference="root")
    assert group.enrollment_group_id == "by-reference"
    assert group.attestation_type == "x509"
    assert group.ca_references == ("root",)
    assert group.signing_certificates == ()
    assert group.primary_key is None
    assert group.provisioning_status == "enabled"
    assert dps.enrollment_group("by-reference") == group


def test_enrollment_group_on_an_unknown_ca_reference_is_refused(dps: dpskit.Dps) -> None:
    with pytest.raises(dpskit.ServiceError) as error:
        dps.create_enrollment_group("dangling", ca_reference="never-uploaded")
    assert error.value.status == 400
    assert dps.enrollment_groups() == []


def test_enrollment_group_with_a_signing_certificate(
    dps: dpskit.Dps, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    group = dps.create_enrollment_group("by-certificate", signing_certificate=ec_intermediate)
    assert group.attestation_type == "x509"
    # The service never returns certificates, only their info.
    [summary] = group.signing_certificates
    assert summary.matches(ec_intermediate.certificate)
    assert summary.subject == ec_intermediate.certificate.subject
    assert summary.not_after == ec_intermediate.certificate.not_after
    assert group.ca_references == ()


def test_symmetric_key_group_keys_are_generated_and_hidden(dps: dpskit.Dps) -> None:
    group = dps.create_enrollment_group("keys", symmetric_key=True)
    assert group.attestation_type == "symmetricKey"
    assert group.primary_key is not None
    assert group.secondary_key is not None
    # Azure's generated keys: 32 random bytes, base64; primary and secondary differ.
    assert len(base64.b64decode(group.primary_key, validate=True)) == 32
    assert len(base64.b64decode(group.secondary_key, validate=True)) == 32
    assert group.primary_key != group.secondary_key
    text = repr(group)
    assert "keys" in text
    assert group.primary_key not in text
    assert group.secondary_key not in text


def test_symmetric_key_group_with_given_keys(dps: dpskit.Dps) -> None:
    primary = base64.b64encode(bytes(range(32))).decode()
    secondary = base64.b64encode(bytes(range(32, 64))).decode()
    group = dps.create_enrollment_group(
        "given-keys", symmetric_key=True, primary_key=primary, secondary_key=secondary
    )
    assert (group.primary_key, group.secondary_key) == (primary, secondary)
    with pytest.raises(dpskit.ConfigError):
        dps.create_enrollment_group("short-key", symmetric_key=True, primary_key="AAAA")


def test_update_enrollment_group_changes_only_what_is_given(dps: dpskit.Dps) -> None:
    created = dps.create_enrollment_group("switch", symmetric_key=True, allocation_policy="hashed")
    disabled = dps.update_enrollment_group("switch", provisioning_status="disabled")
    assert disabled.provisioning_status == "disabled"
    assert disabled.etag != created.etag
    # The attestation and the other settings are kept.
    assert (disabled.primary_key, disabled.secondary_key) == (
        created.primary_key,
        created.secondary_key,
    )
    assert disabled.allocation_policy == "hashed"
    assert dps.enrollment_group("switch").provisioning_status == "disabled"
    enabled = dps.update_enrollment_group("switch", provisioning_status="enabled")
    assert enabled.provisioning_status == "enabled"


class _EnrollmentBodies:
    """The enrollment bodies as they reached the service (the local cloud's request recorder:
    what the core sent on the wire, keys replaced by ``<redacted>``)."""

    def __init__(self, cloud: dpskit.LocalCloud) -> None:
        self._cloud = cloud
        self._recording = cloud.record_requests().__enter__()
        self._skip = 0

    @property
    def bodies(self) -> list[dict[str, Any]]:
        puts = [r for r in self._recording.requests if r.api == "dps" and r.method == "PUT"]
        return [r.body for r in puts[self._skip :]]

    def clear(self) -> None:
        self._skip += len(self.bodies)

    def close(self) -> None:
        self._recording.__exit__(None, None, None)


@pytest.fixture
def recorded(cloud: dpskit.LocalCloud) -> Iterator[_EnrollmentBodies]:
    bodies = _EnrollmentBodies(cloud)
    yield bodies
    bodies.close()


def test_update_enrollment_group_resends_the_attestation(
    dps: dpskit.Dps, ec_intermediate: dpskit.CertificateAuthority, recorded: _EnrollmentBodies
) -> None:
    # Azure refuses an enrollment PUT without attestation (400): every update re-sends the
    # group's own, keys and certificates unchanged.
    keys = dps.create_enrollment_group("by-key", symmetric_key=True)
    certificate = dps.create_enrollment_group("by-cert", signing_certificate=ec_intermediate)
    dps.prove_possession("inter", ec_intermediate)
    reference = dps.create_enrollment_group("by-ref", ca_reference="inter")
    recorded.clear()
    for group in (keys, certificate, reference):
        updated = dps.update_enrollment_group(
            group.enrollment_group_id, provisioning_status="disabled"
        )
        assert updated.provisioning_status == "disabled"
        # The keys the service kept are the ones the update sent (redacted in the recording).
        assert (updated.primary_key, updated.secondary_key) == (
            group.primary_key,
            group.secondary_key,
        )
        assert updated.signing_certificates == group.signing_certificates
        assert updated.ca_references == group.ca_references
    sent = [body["attestation"] for body in recorded.bodies]
    assert [a["type"] for a in sent] == ["symmetricKey", "x509", "x509"]
    assert sent[0]["symmetricKey"] == {"primaryKey": "<redacted>", "secondaryKey": "<redacted>"}
    # Certificate info as the GET gave it: the service keeps the certificate.
    info = sent[1]["x509"]["signingCertificates"]["primary"]["info"]
    assert info["sha1Thumbprint"] == ec_intermediate.certificate.thumbprint_sha1
    assert sent[2]["x509"]["caReferences"] == {"primary": "inter"}


def test_enrollment_bodies_leave_unset_fields_out(
    dps: dpskit.Dps, recorded: _EnrollmentBodies
) -> None:
    # The Azure CLI and the SDKs omit unset fields; dpskit sent them as null.
    dps.create_enrollment_group("plain", symmetric_key=True)
    dps.update_enrollment_group("plain", provisioning_status="disabled")
    dps.create_enrollment("solo-1", symmetric_key=True)
    dps.create_enrollment("solo-2", symmetric_key=True, device_id="device-2", hubs=[])
    bodies = recorded.bodies
    assert len(bodies) == 4
    for body in bodies:
        assert None not in body.values(), body
    # The update re-sends what the group has (its allocation policy included); the creates
    # carry only what was given.
    for body in (bodies[0], *bodies[2:]):
        for absent in ("allocationPolicy", "iotHubs", "initialTwin", "customAllocationDefinition"):
            assert absent not in body, body
    assert "deviceId" not in bodies[2]
    assert bodies[3]["deviceId"] == "device-2"
    assert dps.enrollment("solo-1").device_id in (None, "solo-1")


def test_method_timeouts_past_azures_300_seconds_are_refused_before_sending(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = cloud.create_hub("method-hub")
    # No such device: a ConfigError (not NotFoundError) shows nothing was sent.
    with pytest.raises(dpskit.ConfigError, match="300"):
        hub.invoke_method("nobody", "reboot", timeout=301)
    with pytest.raises(dpskit.NotFoundError):
        hub.invoke_method("nobody", "reboot", timeout=300)


def test_exactly_one_attestation_is_required(dps: dpskit.Dps) -> None:
    with pytest.raises(dpskit.ConfigError):
        dps.create_enrollment_group("none")
    with pytest.raises(dpskit.ConfigError):
        dps.create_enrollment_group("two", ca_reference="root", symmetric_key=True)
    with pytest.raises(dpskit.ConfigError):
        dps.create_enrollment("none")


def test_list_and_delete_enrollment_groups(dps: dpskit.Dps) -> None:
    dps.create_enrollment_group("group-a", symmetric_key=True)
    dps.create_enrollment_group("group-b", symmetric_key=True)
    assert sorted(g.enrollment_group_id for g in dps.enrollment_groups()) == [
        "group-a",
        "group-b",
    ]
    dps.delete_enrollment_group("group-a")
    assert [g.enrollment_group_id for g in dps.enrollment_groups()] == ["group-b"]
    with pytest.raises(dpskit.NotFoundError):
        dps.enrollment_group("group-a")
    with pytest.raises(dpskit.NotFoundError):
        dps.delete_enrollment_group("group-a")


def test_individual_enrollments(
    dps: dpskit.Dps, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    device = ec_intermediate.issue_device("single-x509")
    by_certificate = dps.create_enrollment("single-x509", certificate=device)
    assert by_certificate.registration_id == "single-x509"
    assert by_certificate.attestation_type == "x509"
    [summary] = by_certificate.certificates
    assert summary.matches(device.certificate)
    assert by_certificate.device_id is None

    by_key = dps.create_enrollment("single-key", symmetric_key=True, device_id="custom-device")
    assert by_key.attestation_type == "symmetricKey"
    assert by_key.device_id == "custom-device"
    assert by_key.primary_key is not None
    assert by_key.secondary_key is not None
    assert by_key.primary_key not in repr(by_key)
    assert by_key.secondary_key not in repr(by_key)
    assert dps.enrollment("single-key") == by_key

    assert sorted(e.registration_id for e in dps.enrollments()) == ["single-key", "single-x509"]
    dps.delete_enrollment("single-x509")
    assert [e.registration_id for e in dps.enrollments()] == ["single-key"]
    with pytest.raises(dpskit.NotFoundError):
        dps.enrollment("single-x509")


def test_enrollments_cross_from_the_core_as_typed_records(
    dps: dpskit.Dps, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    # The REST client reads each answer into the service type once, in Rust, and hands Python
    # a typed record (no JSON read again field by field).
    dps.create_enrollment_group(
        "typed",
        signing_certificate=ec_intermediate,
        allocation_policy="geoLatency",
        reprovision_policy=dpskit.ReprovisionPolicy(migrate_device_data=False),
        initial_twin={"tags": {"site": "lab"}},
        custom_allocation="https://hook.example/allocate",
    )
    rest, service = dps._rest, dps._service
    group = rest.enrollment_group(service, "typed")
    assert isinstance(group, _native.EnrollmentGroupRecord)
    assert group.enrollment_group_id == "typed"
    attestation = group.attestation
    assert attestation.kind == "x509"
    assert attestation.primary_certificate is not None
    info = attestation.primary_certificate
    assert info.sha1_thumbprint == ec_intermediate.certificate.thumbprint_sha1
    assert info.subject_name == ec_intermediate.certificate.subject
    assert info.version == 3
    settings = group.settings
    assert settings.provisioning_status == "enabled"
    # A custom allocation target implies the custom policy.
    assert settings.allocation.policy == "custom"
    assert settings.allocation.custom is not None
    assert settings.allocation.custom.webhook_url == "https://hook.example/allocate"
    assert settings.reprovision_policy.migrate_device_data is False
    assert settings.reprovision_policy.update_hub_assignment is True
    assert settings.initial_twin == {"tags": {"site": "lab"}}
    assert group.etag
    assert group.created.endswith("Z")
    dps.create_enrollment("typed-device", symmetric_key=True, device_id="dev")
    [enrollment] = rest.enrollments(service)
    assert isinstance(enrollment, _native.IndividualEnrollmentRecord)
    assert (enrollment.registration_id, enrollment.device_id) == ("typed-device", "dev")
    assert enrollment.attestation.kind == "symmetricKey"
    key = enrollment.attestation.primary_key
    assert key is not None
    assert key not in repr(enrollment.attestation)
    keys = rest.enrollment_group_attestation(service, "typed")
    assert isinstance(keys, _native.AttestationRecord)
    assert keys.kind == "x509"


def test_individual_enrollment_needs_a_valid_registration_id(dps: dpskit.Dps) -> None:
    # Registration ids follow DPS's rules (no spaces): refused before anything is stored.
    with pytest.raises(ValueError, match="registration id"):
        dps.create_enrollment("not valid", symmetric_key=True)
    assert dps.enrollments() == []


def test_registrations_are_empty_initially(dps: dpskit.Dps) -> None:
    dps.create_enrollment_group("quiet", symmetric_key=True)
    assert dps.registrations() == []
    assert dps.registrations("quiet") == []


# -- realism knobs ---------------------------------------------------------------------------


def test_knobs_accept_valid_values(dps: dpskit.Dps) -> None:
    dps.set_assignment_latency(0.25)
    dps.set_assignment_latency(0)
    dps.set_registration_quota(1000)
    dps.set_registration_quota(None)
    dps.refuse_registrations(2, status=503)
    dps.refuse_registrations(0)
    dps.set_device_location("roaming-1", "eastus")


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_assignment_latency_must_be_a_finite_positive_duration(
    dps: dpskit.Dps, seconds: float
) -> None:
    with pytest.raises(dpskit.ConfigError):
        dps.set_assignment_latency(seconds)


@pytest.mark.parametrize("status", [200, 302, 99, 600])
def test_refusal_status_must_be_an_http_error(dps: dpskit.Dps, status: int) -> None:
    with pytest.raises(dpskit.ConfigError):
        dps.refuse_registrations(1, status=status)


def test_negative_counts_are_config_errors(dps: dpskit.Dps) -> None:
    # Every deliberate dpskit error is a DpsKitError; a raw OverflowError from the native
    # conversion would escape handlers written for ConfigError.
    with pytest.raises(dpskit.ConfigError):
        dps.set_registration_quota(-1)
    with pytest.raises(dpskit.ConfigError):
        dps.refuse_registrations(-1)


# -- traces ----------------------------------------------------------------------------------


def test_trace_records_a_refused_connect(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    assert cloud.trace_events("probe-1") == []
    cloud.trace("probe-1")
    username = f"{dps.id_scope}/registrations/probe-1/api-version=2019-03-31"
    connack = mqtt_connect(cloud, "probe-1", username)
    # CONNACK: type 0x20, length 2, no session, return code 5 "not authorized" (no credentials).
    assert connack == b"\x20\x02\x00\x05"

    events = cloud.trace_events("probe-1")
    assert [(e.direction, e.kind) for e in events] == [
        ("device->cloud", "CONNECT"),
        ("cloud->device", "CONNACK"),
    ]
    connect, refusal = events
    assert "client_id=probe-1" in connect.detail
    assert username in connect.detail
    assert refusal.status == 5
    assert "NotAuthorized" in refusal.detail
    # Timestamps are aware UTC datetimes, in exchange order.
    assert connect.at.tzinfo is not None
    assert connect.at <= refusal.at

    text = cloud.format_trace("probe-1")
    assert "device → cloud  CONNECT" in text
    assert "cloud → device  CONNACK  5" in text
    assert text == "\n".join(str(e) for e in events)
    # Client ids are case-insensitive, as in DPS.
    assert cloud.trace_events("PROBE-1") == events


def test_trace_only_records_watched_clients(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    username = f"{dps.id_scope}/registrations/unwatched/api-version=2019-03-31"
    mqtt_connect(cloud, "unwatched", username)
    assert cloud.trace_events("unwatched") == []
    assert cloud.format_trace("unwatched") == ""

    cloud.trace(None)  # every client
    mqtt_connect(cloud, "anyone-1", f"{dps.id_scope}/registrations/anyone-1/api-version=x")
    assert len(cloud.trace_events("anyone-1")) == 2

    cloud.trace(None, enabled=False)
    cloud.trace("quiet-1")
    cloud.trace("quiet-1", enabled=False)
    mqtt_connect(cloud, "quiet-1", f"{dps.id_scope}/registrations/quiet-1/api-version=x")
    assert cloud.trace_events("quiet-1") == []


# -- durability ------------------------------------------------------------------------------


def test_state_survives_a_restart_on_the_same_data_dir(
    tmp_path: Path,
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
) -> None:
    with dpskit.LocalCloud(tmp_path, port=0) as first:
        assert first.data_dir == tmp_path
        west = first.create_hub("hub-west")
        first.create_hub("hub-north", "northeurope")
        dps = first.create_dps("dps-durable")
        first.link_hub(dps, west, allocation_weight=2)
        dps.prove_possession("root", ec_root)
        dps.upload_ca_certificate("inter", ec_intermediate)
        x509_group = dps.create_enrollment_group("x509-group", ca_reference="root")
        key_group = dps.create_enrollment_group("key-group", symmetric_key=True)
        dps.create_enrollment("single", symmetric_key=True)
        trust = first.trust_pem
        id_scope = dps.id_scope
    # A given data_dir is the user's: stop keeps it.
    assert (tmp_path / "state.sqlite3").exists()

    with dpskit.LocalCloud(tmp_path, port=0) as second:
        assert second.trust_pem == trust, "the emulator's CA is kept, so clients keep trusting it"
        assert {(h.name, h.host_name, h.location) for h in second.hubs()} == {
            ("hub-west", "127.0.0.2", "westeurope"),
            ("hub-north", "127.0.0.3", "northeurope"),
        }
        # A new hub does not reuse a stored hub's address.
        assert second.create_hub("hub-new").host_name == "127.0.0.4"
        again = second.dps("dps-durable")
        assert again.id_scope == id_scope
        assert [(h.hub, h.allocation_weight) for h in again.linked_hubs()] == [("hub-west", 2)]
        assert {(c.name, c.is_verified) for c in again.ca_certificates()} == {
            ("root", True),
            ("inter", False),
        }
        assert again.ca_certificate("root").certificate == ec_root.certificate
        assert again.enrollment_group("x509-group") == x509_group
        restored_keys = again.enrollment_group("key-group")
        assert restored_keys == key_group
        assert restored_keys.primary_key == key_group.primary_key
        assert [e.registration_id for e in again.enrollments()] == ["single"]
        assert again.registrations() == []


# -- one management path, one registration result ---------------------------------------------


def test_the_native_emulator_has_no_second_management_api() -> None:
    # Hubs, DPS instances, certificates, enrollments, devices and twins are managed through the
    # REST APIs only; the native object keeps what REST cannot reach (knobs, traces, usage,
    # the recorder, Python allocators, a hub at a chosen address, the cloud's clock, the
    # Device Registry CA certificates ARM does not publish).
    public = {name for name in dir(_native.Emulator) if not name.startswith("_")}
    assert public == {
        "advance_time",
        "amqp_port",
        "arm_token",
        "create_hub",
        "data_dir",
        "host",
        "https_port",
        "hub_drop_connection",
        "hub_usage",
        "is_running",
        "mqtt_port",
        "namespace_root_pem",
        "now_ms",
        "policy_issuing_pem",
        "recorded_requests",
        "register_allocator",
        "start_recording",
        "stop",
        "stop_recording",
        "throttled_requests",
        "trace",
        "trace_events",
        "trust_pem",
        "update_dps_knobs",
        "update_hub_knobs",
        "web_port",
    }


def test_bulk_and_single_provisioning_give_the_same_registration_result(
    cloud: dpskit.LocalCloud, dps: dpskit.Dps, ec_root: dpskit.CertificateAuthority
) -> None:
    hub = cloud.create_hub("hub-results")
    cloud.link_hub(dps, hub)
    dps.prove_possession("root", ec_root)
    dps.create_enrollment_group("results", ca_reference="root")
    bulk_device, single_device = ec_root.issue_device("bulk-1"), ec_root.issue_device("single-1")
    [outcome] = dpskit.provision_devices(dps, [bulk_device])
    single = dpskit.provision_sync(
        dps.device_endpoint,
        id_scope=dps.id_scope,
        certificate=single_device,
        trust=cloud.trust_pem,
    )
    bulk = outcome.result
    assert bulk is not None, outcome.error
    for result, device_id in ((bulk, "bulk-1"), (single, "single-1")):
        assert (result.status, result.registration_id) == ("assigned", device_id)
        assert (result.assigned_hub, result.device_id) == (hub.host_name, device_id)
        assert result.substatus == "initialAssignment"
        assert result.created is not None
        assert result.last_updated is not None
        assert result.etag
        assert result.operation_id
        assert result.port == dps.device_port
    assert (outcome.assigned_hub, outcome.device_id) == (bulk.assigned_hub, bulk.device_id)


# -- keys and secrets ------------------------------------------------------------------------


def test_derive_device_key_known_answer() -> None:
    # HMAC-SHA256(key=base64decode(group key), msg=registration id), base64: Azure's formula.
    group_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    expected = "BG0x/0mIbqnG9RWsosby2GxBOeYgRhXI9gnRqn2lxFI="
    assert dpskit.derive_device_key(group_key, "device-001") == expected


def test_derive_device_key_matches_the_hmac_definition() -> None:
    import hashlib
    import hmac

    group_key = base64.b64encode(bytes(range(32, 64))).decode()
    mac = hmac.new(base64.b64decode(group_key), b"sensor-42", hashlib.sha256).digest()
    assert dpskit.derive_device_key(group_key, "sensor-42") == base64.b64encode(mac).decode()


def test_secrets_never_appear_in_repr(cloud: dpskit.LocalCloud, dps: dpskit.Dps) -> None:
    hub = cloud.create_hub("hub-secret")
    hub_key = hub.connection_string.rsplit("SharedAccessKey=", 1)[1]
    dps_key = dps.service_connection_string.rsplit("SharedAccessKey=", 1)[1]
    assert hub_key
    assert dps_key
    for text in (repr(hub), str(hub), repr(cloud.hub("hub-secret")), repr(cloud.hubs())):
        assert hub_key not in text
    for text in (repr(dps), str(dps), repr(cloud.dps(dps.name)), repr(cloud.all_dps())):
        assert dps_key not in text
    assert hub_key not in repr(cloud)
    assert dps_key not in repr(cloud)

    group = dps.create_enrollment_group("secret-group", symmetric_key=True)
    assert group.primary_key is not None
    assert group.secondary_key is not None
    for text in (repr(group), str(group), repr(dps.enrollment_groups())):
        assert group.primary_key not in text
        assert group.secondary_key not in text

    # HubDevice records are public dataclasses; a SAS device's keys stay out of its repr.
    device = dpskit.HubDevice(
        device_id="sas-device",
        hub=hub.host_name,
        authentication="sas",
        thumbprint=None,
        primary_key=dpskit.derive_device_key(group.primary_key, "sas-device"),
        secondary_key=dpskit.derive_device_key(group.secondary_key, "sas-device"),
        connection_state="Disconnected",
    )
    assert device.primary_key is not None
    assert device.secondary_key is not None
    assert "sas-device" in repr(device)
    assert device.primary_key not in repr(device)
    assert device.secondary_key not in repr(device)


def test_starting_a_local_cloud_lifts_the_open_file_limit() -> None:
    """Every device connection is a file descriptor: a soft limit of 1,024 must not cap the
    emulator at about a thousand devices when the hard limit allows more."""
    import subprocess
    import sys

    script = """
import resource, dpskit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
with dpskit.LocalCloud(port=0):
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    soft_after, hard = int(out[0]), int(out[1])
    if hard == -1:  # RLIM_INFINITY: lifted to a fixed, large value
        assert soft_after >= 65_536
    else:
        assert soft_after == hard
