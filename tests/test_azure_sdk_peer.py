"""The official Azure SDK (``azure-iot-device``), unchanged, provisions through the local cloud.

Microsoft's device SDK is the peer we are judged against: if it provisions, and fails exactly
where Azure fails, the emulator speaks DPS. The SDK always dials port 8883, so the module shares
one ``LocalCloud(port=8883)`` (skipped when something else holds that port). The SDK waits a
fixed 2 s before its first status poll, so independent registrations run in threads.

Each refusal test checks three things: the SDK raises, the emulator's trace shows the refusal
Azure would send (401 with its reason, or a refused CONNACK), and after fixing the cause the same
device provisions (the refusal was for that reason, and the emulator keeps serving).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.iot.device", reason="the official Azure IoT device SDK is not installed")

from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.common.evented_callback import EventedCallback
from azure.iot.device.exceptions import ClientError, CredentialError
from azure.iot.device.exceptions import ServiceError as SdkServiceError

import dpskit
from conftest import port_is_free

# The SDK itself builds its TLS context with the deprecated ssl.PROTOCOL_TLSv1_2: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

SDK_PORT = 8883
HUB_NAMES = ("peer-hub-1", "peer-hub-2")


@dataclass(frozen=True)
class Peer:
    """The shared local cloud: one DPS with two linked hubs."""

    cloud: dpskit.LocalCloud
    dps: dpskit.Dps
    hubs: tuple[dpskit.Hub, dpskit.Hub]

    @property
    def host_names(self) -> set[str]:
        return {h.host_name for h in self.hubs}

    def hub_by_host(self, host_name: str) -> dpskit.Hub:
        return next(h for h in self.hubs if h.host_name == host_name)


@dataclass(frozen=True)
class Assignment:
    """What the SDK's ``RegistrationResult`` told the device (typed)."""

    status: str
    assigned_hub: str
    device_id: str
    sub_status: str
    response_payload: str


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    if not port_is_free(SDK_PORT):
        pytest.skip(
            f"port {SDK_PORT} is in use: the official SDK always dials {SDK_PORT}, "
            "so these tests need it free"
        )
    with dpskit.LocalCloud(port=SDK_PORT) as cloud:
        dps = cloud.create_dps("peer-dps")
        first = cloud.create_hub(HUB_NAMES[0])
        second = cloud.create_hub(HUB_NAMES[1], "northeurope")
        cloud.link_hub(dps, first)
        cloud.link_hub(dps, second)
        yield Peer(cloud=cloud, dps=dps, hubs=(first, second))


@dataclass(frozen=True)
class Hierarchy:
    """A root → intermediate → devices PKI of one test (never shared, so no group of another
    test matches its devices)."""

    root: dpskit.CertificateAuthority
    inter: dpskit.CertificateAuthority


@pytest.fixture
def pki(request: pytest.FixtureRequest) -> Hierarchy:
    name = request.node.name[:40]
    root = dpskit.CertificateAuthority.create_root(f"{name} root")
    return Hierarchy(root=root, inter=root.create_intermediate(f"{name} intermediate"))


# -- typed wrappers around the SDK -----------------------------------------------------------


def x509_client(
    peer: Peer,
    device: dpskit.DeviceCertificate,
    folder: Path,
    *,
    registration_id: str | None = None,
    leaf_only: bool = False,
) -> ProvisioningDeviceClient:
    """An SDK client presenting ``device``: leaf + intermediates (the saved ``chain`` file), or
    the leaf alone."""
    files = device.save(folder)
    certificate = files["certificate" if leaf_only else "chain"]
    return ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=peer.dps.device_endpoint,
        registration_id=registration_id or device.registration_id,
        id_scope=peer.dps.id_scope,
        x509=X509(  # type: ignore[no-untyped-call]
            cert_file=str(certificate), key_file=str(files["private_key"])
        ),
        server_verification_cert=peer.cloud.trust_pem,
    )


def key_client(peer: Peer, registration_id: str, key: str) -> ProvisioningDeviceClient:
    """An SDK client authenticating with a (derived or individual) symmetric key."""
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=peer.dps.device_endpoint,
        registration_id=registration_id,
        id_scope=peer.dps.id_scope,
        symmetric_key=key,
        server_verification_cert=peer.cloud.trust_pem,
    )


def register(client: ProvisioningDeviceClient) -> Assignment:
    """``client.register()``, its result checked for a registration state and made typed."""
    result = client.register()
    state = result.registration_state
    assert state is not None, f"no registration state: {result}"
    return Assignment(
        status=result.status,
        assigned_hub=state.assigned_hub,
        device_id=state.device_id,
        sub_status=state.sub_status,
        response_payload=str(state.response_payload),
    )


def register_all(clients: Sequence[ProvisioningDeviceClient]) -> list[Assignment]:
    """Register independent devices at once: each SDK registration waits 2 s before polling."""
    with ThreadPoolExecutor(max_workers=max(1, len(clients))) as pool:
        return list(pool.map(register, clients))


def shut_down(client: ProvisioningDeviceClient) -> None:
    """Shut the client's pipeline down, as ``register()`` does itself after a success.

    After a failure the SDK stays connected so that the caller may retry; left alone, its
    reconnect timers outlive the emulator and fire during interpreter shutdown. The SDK has no
    public close, hence the private ``_pipeline``.
    """
    done = EventedCallback()  # type: ignore[no-untyped-call]
    client._pipeline.shutdown(callback=done)  # type: ignore[no-untyped-call]
    done.wait_for_completion()  # type: ignore[no-untyped-call]


def causes(error: BaseException) -> list[BaseException]:
    """The error and its ``__cause__`` chain."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def assert_assigned(peer: Peer, result: Assignment, registration_id: str) -> dpskit.Hub:
    """A successful first registration on one of the linked hubs; returns that hub."""
    assert result.status == "assigned"
    assert result.assigned_hub in peer.host_names
    assert result.device_id == registration_id
    assert result.sub_status == "initialAssignment"
    return peer.hub_by_host(result.assigned_hub)


def assert_refused_with_401(
    peer: Peer, client: ProvisioningDeviceClient, registration_id: str, reason: str
) -> None:
    """The register request is answered 401 (Azure's 401002) for ``reason``."""
    peer.cloud.trace(registration_id)
    with pytest.raises(ClientError) as caught:
        client.register()
    shut_down(client)
    chain = causes(caught.value)
    assert any(isinstance(e, SdkServiceError) and "401" in str(e) for e in chain), chain

    replies = [
        e
        for e in peer.cloud.trace_events(registration_id)
        if e.direction == "cloud->device" and e.kind == "PUBLISH"
    ]
    assert replies, peer.cloud.format_trace(registration_id)
    refusal = replies[-1]
    assert refusal.status == 401, peer.cloud.format_trace(registration_id)
    assert refusal.topic is not None
    assert refusal.topic.startswith("$dps/registrations/res/401/?$rid=")
    body = json.loads(refusal.detail)
    assert body["errorCode"] == 401002
    assert reason in body["message"], body["message"]
    # The refusal carries Azure's tracking fields.
    assert body["trackingId"]
    assert body["timestampUtc"].endswith("Z")


def assert_connect_refused(
    peer: Peer, client: ProvisioningDeviceClient, registration_id: str
) -> None:
    """The CONNECT is refused with MQTT's "not authorized" (5), as Azure's gateway does."""
    peer.cloud.trace(registration_id)
    # The SDK maps CONNACK 5 to CredentialError (a refused connection would be
    # ConnectionFailedError: not what Azure does with a bad SAS token).
    with pytest.raises(CredentialError):
        client.register()
    shut_down(client)
    connacks = [e for e in peer.cloud.trace_events(registration_id) if e.kind == "CONNACK"]
    assert connacks, peer.cloud.format_trace(registration_id)
    assert connacks[-1].status == 5, peer.cloud.format_trace(registration_id)
    assert "NotAuthorized" in connacks[-1].detail
    # Refused at the door: no register request reached DPS.
    assert not any(e.kind == "PUBLISH" for e in peer.cloud.trace_events(registration_id))


def registration(peer: Peer, registration_id: str) -> dpskit.RegistrationRecord:
    """The DPS's record of one device (exactly one)."""
    records = [r for r in peer.dps.registrations() if r.registration_id == registration_id]
    assert len(records) == 1, peer.dps.registrations()
    return records[0]


def hub_device(hub: dpskit.Hub, device_id: str) -> dpskit.HubDevice:
    """The identity DPS created for a device in a hub (exactly one), keys included (the list
    carries none, as the hub's query API does not)."""
    devices = [d for d in hub.devices() if d.device_id == device_id]
    assert len(devices) == 1, hub.devices()
    return hub.device(device_id)


# -- X.509 -----------------------------------------------------------------------------------


def test_x509_group_on_an_intermediate_verified_by_proof_of_possession(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    info = peer.dps.prove_possession("inter-pop", pki.inter)
    assert info.is_verified
    peer.dps.create_enrollment_group("group-inter", ca_reference="inter-pop")
    device = pki.inter.issue_device("sdk-inter-001")

    result = register(x509_client(peer, device, tmp_path))

    hub = assert_assigned(peer, result, "sdk-inter-001")
    records = peer.dps.registrations("group-inter")
    assert [(r.registration_id, r.status, r.assigned_hub) for r in records] == [
        ("sdk-inter-001", "assigned", hub.host_name)
    ]
    assert records[0].enrollment_group_id == "group-inter"
    assert records[0].attestation == "x509"
    # DPS registered a thumbprint ("selfSigned") identity in the hub it chose.
    identity = hub_device(hub, "sdk-inter-001")
    assert identity.authentication == "selfSigned"
    assert identity.thumbprint == device.certificate.thumbprint_sha1


def test_x509_group_on_the_root_with_leaf_and_intermediate(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.upload_ca_certificate("root-verified", pki.root, verified=True)
    peer.dps.create_enrollment_group("group-root", ca_reference="root-verified")
    device = pki.inter.issue_device("sdk-root-001")

    # The "chain" file: the leaf, then the intermediate that links it to the enrolled root.
    result = register(x509_client(peer, device, tmp_path))

    hub = assert_assigned(peer, result, "sdk-root-001")
    assert registration(peer, "sdk-root-001").enrollment_group_id == "group-root"
    assert hub_device(hub, "sdk-root-001").thumbprint == device.certificate.thumbprint_sha1


def test_individual_x509_enrollment(peer: Peer, pki: Hierarchy, tmp_path: Path) -> None:
    device = pki.inter.issue_device("sdk-single-x509")
    peer.dps.create_enrollment("sdk-single-x509", certificate=device)

    result = register(x509_client(peer, device, tmp_path))

    hub = assert_assigned(peer, result, "sdk-single-x509")
    record = registration(peer, "sdk-single-x509")
    assert record.enrollment_group_id is None  # an individual enrollment, not a group
    assert record.attestation == "x509"
    assert hub_device(hub, "sdk-single-x509").authentication == "selfSigned"


# -- symmetric keys --------------------------------------------------------------------------


def test_symmetric_key_group_with_a_derived_key(peer: Peer) -> None:
    group = peer.dps.create_enrollment_group("group-keys", symmetric_key=True)
    assert group.primary_key is not None
    derived = dpskit.derive_device_key(group.primary_key, "sdk-sym-001")

    result = register(key_client(peer, "sdk-sym-001", derived))

    hub = assert_assigned(peer, result, "sdk-sym-001")
    record = registration(peer, "sdk-sym-001")
    assert (record.enrollment_group_id, record.attestation) == ("group-keys", "symmetricKey")
    identity = hub_device(hub, "sdk-sym-001")
    assert identity.authentication == "sas"
    assert identity.primary_key == derived
    assert derived not in repr(identity)


def test_individual_symmetric_key_enrollment(peer: Peer) -> None:
    enrollment = peer.dps.create_enrollment("sdk-sym-single", symmetric_key=True)
    assert enrollment.primary_key is not None

    result = register(key_client(peer, "sdk-sym-single", enrollment.primary_key))

    hub = assert_assigned(peer, result, "sdk-sym-single")
    assert registration(peer, "sdk-sym-single").enrollment_group_id is None
    assert hub_device(hub, "sdk-sym-single").primary_key == enrollment.primary_key


# -- allocation and payload ------------------------------------------------------------------


def test_hashed_allocation_spreads_a_group_over_both_hubs(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.prove_possession("inter-spread", pki.inter)
    peer.dps.create_enrollment_group(
        "group-spread", ca_reference="inter-spread", allocation_policy="hashed"
    )
    ids = [f"sdk-spread-{i:02d}" for i in range(8)]
    # The hash is of the registration id, so these fixed ids always split the same way.
    clients = [x509_client(peer, pki.inter.issue_device(i), tmp_path) for i in ids]

    results = register_all(clients)

    placed = {
        rid: assert_assigned(peer, result, rid).host_name
        for rid, result in zip(ids, results, strict=True)
    }
    assert set(placed.values()) == peer.host_names, placed
    records = {r.registration_id: r for r in peer.dps.registrations("group-spread")}
    assert {rid: r.assigned_hub for rid, r in records.items()} == placed
    for hub in peer.hubs:
        here = {d.device_id for d in hub.devices() if d.device_id.startswith("sdk-spread-")}
        assert here == {rid for rid, host in placed.items() if host == hub.host_name}


def test_custom_provisioning_payload_is_accepted(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.prove_possession("inter-payload", pki.inter)
    peer.dps.create_enrollment_group("group-payload", ca_reference="inter-payload")
    client = x509_client(peer, pki.inter.issue_device("sdk-payload-001"), tmp_path)
    payload: dict[str, Any] = {"modelId": "dtmi:dpskit:sensor;1", "firmware": [1, 2, 3]}
    client.provisioning_payload = payload
    peer.cloud.trace("sdk-payload-001")

    result = register(client)

    assert_assigned(peer, result, "sdk-payload-001")
    # Without custom allocation nothing is returned to the device (as in Azure).
    assert result.response_payload == "null"
    requests = [
        e
        for e in peer.cloud.trace_events("sdk-payload-001")
        if e.direction == "device->cloud"
        and e.kind == "PUBLISH"
        and "iotdps-register" in str(e.topic)
    ]
    assert len(requests) == 1
    assert json.loads(requests[0].detail) == {
        "registrationId": "sdk-payload-001",
        "payload": payload,
    }


# -- refusals, each the way Azure refuses, each followed by a good registration -------------


def test_refused_when_the_ca_is_uploaded_but_not_verified(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.upload_ca_certificate("inter-unverified", pki.inter)
    peer.dps.create_enrollment_group("group-unverified", ca_reference="inter-unverified")
    device = pki.inter.issue_device("sdk-unverified")

    assert_refused_with_401(
        peer, x509_client(peer, device, tmp_path), "sdk-unverified", "not verified"
    )
    assert [r.registration_id for r in peer.dps.registrations("group-unverified")] == []

    peer.dps.prove_possession("inter-unverified", pki.inter)
    assert_assigned(peer, register(x509_client(peer, device, tmp_path)), "sdk-unverified")


def test_refused_when_the_common_name_is_not_the_registration_id(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.prove_possession("inter-cn", pki.inter)
    peer.dps.create_enrollment_group("group-cn", ca_reference="inter-cn")
    device = pki.inter.issue_device("sdk-cn-real")

    impostor = x509_client(peer, device, tmp_path, registration_id="sdk-cn-claimed")
    assert_refused_with_401(peer, impostor, "sdk-cn-claimed", "does not match the registration id")

    assert_assigned(peer, register(x509_client(peer, device, tmp_path)), "sdk-cn-real")


def test_refused_when_the_leaf_has_expired(peer: Peer, pki: Hierarchy, tmp_path: Path) -> None:
    peer.dps.prove_possession("inter-expired", pki.inter)
    peer.dps.create_enrollment_group("group-expired", ca_reference="inter-expired")
    three_days_ago = datetime.now(timezone.utc) - timedelta(days=3)
    expired = pki.inter.issue_device("sdk-expired", not_before=three_days_ago, days=1)
    # A separate folder: the renewed certificate is saved under the same file names.
    old_folder = tmp_path / "expired"
    old_folder.mkdir()

    assert_refused_with_401(peer, x509_client(peer, expired, old_folder), "sdk-expired", "validity")

    renewed = pki.inter.issue_device("sdk-expired")
    assert_assigned(peer, register(x509_client(peer, renewed, tmp_path)), "sdk-expired")


def test_refused_when_the_group_is_disabled(peer: Peer, pki: Hierarchy, tmp_path: Path) -> None:
    peer.dps.prove_possession("inter-disabled", pki.inter)
    peer.dps.create_enrollment_group("group-disabled", ca_reference="inter-disabled")
    peer.dps.update_enrollment_group("group-disabled", provisioning_status="disabled")
    device = pki.inter.issue_device("sdk-disabled")

    assert_refused_with_401(peer, x509_client(peer, device, tmp_path), "sdk-disabled", "disabled")

    peer.dps.update_enrollment_group("group-disabled", provisioning_status="enabled")
    assert_assigned(peer, register(x509_client(peer, device, tmp_path)), "sdk-disabled")


def test_refused_at_connect_with_a_wrong_symmetric_key(peer: Peer) -> None:
    group = peer.dps.create_enrollment_group("group-wrong-key", symmetric_key=True)
    assert group.primary_key is not None
    # Another device's derived key: valid base64, wrong signature for this registration id.
    wrong = dpskit.derive_device_key(group.primary_key, "somebody-else")

    assert_connect_refused(peer, key_client(peer, "sdk-wrong-key", wrong), "sdk-wrong-key")

    right = dpskit.derive_device_key(group.primary_key, "sdk-wrong-key")
    assert_assigned(peer, register(key_client(peer, "sdk-wrong-key", right)), "sdk-wrong-key")


def test_refused_when_only_the_leaf_is_sent_for_a_group_on_the_root(
    peer: Peer, pki: Hierarchy, tmp_path: Path
) -> None:
    peer.dps.prove_possession("root-leaf-only", pki.root)
    peer.dps.create_enrollment_group("group-leaf-only", ca_reference="root-leaf-only")
    device = pki.inter.issue_device("sdk-leaf-only")

    # DPS cannot link the leaf to the root without the intermediate (it does not fetch issuers).
    leaf_alone = x509_client(peer, device, tmp_path, leaf_only=True)
    assert_refused_with_401(peer, leaf_alone, "sdk-leaf-only", "only the leaf was sent")

    assert_assigned(peer, register(x509_client(peer, device, tmp_path)), "sdk-leaf-only")
