"""Certificates issued by DPS, spoken to the emulator by a client that shares no code with
dpskit: paho-mqtt for MQTT, Python's ``ssl`` for TLS, OpenSSL's command line for keys and
CSRs, and the topics and bodies written out here as Azure documents them (the DPS device API at
api-version 2025-07-01-preview; IoT Hub's ``$iothub/credentials`` renewal at
2025-08-01-preview).

A device onboards with a bootstrap credential (an X.509 certificate, or a symmetric key from a
group), sends a CSR, receives its chain (leaf, issuing CA, root), connects to its hub with it,
renews through the hub, and finds its certificates expire when the cloud's clock is moved on.
Each refusal is checked with the code Azure documents.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import queue
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (the raw MQTT peer) is not installed")

import paho.mqtt.client as mqtt  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import dpskit
from conftest import OpenSSLOutput, RunOpenSSL

DPS_API = "2025-07-01-preview"
HUB_API = "2025-08-01-preview"
VALIDITY_DAYS = 10


@dataclass(frozen=True)
class World:
    """One cloud: a DPS and a hub linked to a Device Registry namespace with a policy, an X.509
    group and a symmetric-key group that issue through it, and a group that does not."""

    cloud: dpskit.LocalCloud
    dps: dpskit.Dps
    hub: dpskit.Hub
    bootstrap_ca: dpskit.CertificateAuthority
    group_key: str


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("issuing-hub")
        dps = cloud.create_dps("issuing-dps")
        cloud.link_hub(dps, hub)
        namespace = cloud.create_device_registry_namespace("wire-ns", "westeurope")
        namespace.create_policy("wire-policy", validity_days=VALIDITY_DAYS)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        root = dpskit.CertificateAuthority.create_root("Bootstrap Root")
        dps.prove_possession("bootstrap", root)
        dps.create_enrollment_group(
            "x509-issuing", ca_reference="bootstrap", credential_policy="wire-policy"
        )
        keys = dps.create_enrollment_group(
            "keys-issuing", symmetric_key=True, credential_policy="wire-policy"
        )
        assert keys.primary_key is not None
        yield World(cloud, dps, hub, root, keys.primary_key)


# -- an MQTT client written to Azure's documentation --------------------------------------------


class RawClient:
    """paho over TLS, collecting every PUBLISH it receives."""

    def __init__(
        self,
        host_port: str,
        client_id: str,
        username: str,
        *,
        trust_pem: str,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        password: str | None = None,
    ) -> None:
        host, _, port = host_port.rpartition(":")
        context = ssl.create_default_context(cadata=trust_pem)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.refused: int | None = None
        self._client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
        self._client.username_pw_set(username, password)
        self._client.tls_set_context(context)
        self._client.on_message = lambda _c, _u, msg: self.received.put((msg.topic, msg.payload))
        connected: queue.Queue[int] = queue.Queue()
        self._client.on_connect = lambda _c, _u, _f, rc: connected.put(rc)
        self._client.connect(host or host_port, int(port or 8883), keepalive=60)
        self._client.loop_start()
        rc = connected.get(timeout=15)
        if rc != 0:
            self.refused = rc
            self.close()

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self._client.on_subscribe = lambda *_a: done.put(True)
        self._client.subscribe(topic, qos=1)
        done.get(timeout=10)

    def publish(self, topic: str, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def next(self, prefix: str, timeout: float = 15.0) -> tuple[str, Any]:
        """The next message whose topic starts with ``prefix`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            topic, payload = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            if topic.startswith(prefix):
                return topic, json.loads(payload) if payload else None

    def nothing(self, prefix: str, wait: float = 1.0) -> bool:
        try:
            self.next(prefix, timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def dps_endpoint(world: World) -> str:
    return f"{world.dps.device_host}:{world.dps.device_port}"


def status_of(topic: str) -> int:
    return int(topic.split("/")[3])


def sas_token(resource: str, key: str, policy: str | None, expiry: int) -> str:
    """A SAS token as Azure documents it: HMAC-SHA256 of the url-encoded resource, a line
    break and the expiry."""
    encoded = urllib.parse.quote(resource, safe="")
    signature = hmac.new(
        base64.b64decode(key), f"{encoded}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    token = (
        f"SharedAccessSignature sr={encoded}"
        f"&sig={urllib.parse.quote(base64.b64encode(signature).decode(), safe='')}&se={expiry}"
    )
    return token + (f"&skn={policy}" if policy else "")


def derived_key(group_key: str, registration_id: str) -> str:
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def openssl_key_and_csr(
    run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput, folder: Path, cn: str, curve: str
) -> tuple[Path, str]:
    """An EC key (or ``rsa:BITS``) and a DER CSR with ``CN=cn``, base64 as the wire wants it."""
    key = folder / f"{cn}-{curve}.key.pem"
    if curve.startswith("rsa:"):
        run_openssl("genrsa", "-out", key, curve.split(":")[1])
    else:
        run_openssl("ecparam", "-name", curve, "-genkey", "-noout", "-out", key)
    der = folder / f"{cn}-{curve}.csr.der"
    run_openssl("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-outform", "DER", "-out", der)
    return key, base64.b64encode(der.read_bytes()).decode()


def dps_client(world: World, registration_id: str, folder: Path, bootstrap: str) -> RawClient:
    username = f"{world.dps.id_scope}/registrations/{registration_id}/api-version={DPS_API}"
    if bootstrap == "x509":
        device = world.bootstrap_ca.issue_device(registration_id)
        files = device.save(folder / registration_id)
        return RawClient(
            dps_endpoint(world),
            registration_id,
            username,
            trust_pem=world.cloud.trust_pem,
            cert_file=files["chain"],
            key_file=files["private_key"],
        )
    key = derived_key(world.group_key, registration_id)
    resource = f"{world.dps.id_scope}/registrations/{registration_id}"
    return RawClient(
        dps_endpoint(world),
        registration_id,
        username,
        trust_pem=world.cloud.trust_pem,
        password=sas_token(resource, key, "registration", int(time.time()) + 3600),
    )


def register(client: RawClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Register and poll as the documented flow does; returns the final status and body."""
    client.subscribe("$dps/registrations/res/#")
    client.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body)
    topic, answer = client.next("$dps/registrations/res/")
    rid = 2
    while status_of(topic) == 202:
        operation = urllib.parse.quote(answer["operationId"], safe="")
        client.publish(
            f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation}",
            b"",
        )
        topic, answer = client.next("$dps/registrations/res/")
        rid += 1
    return status_of(topic), answer


def chain_of(answer: dict[str, Any]) -> list[x509.Certificate]:
    return [
        x509.load_der_x509_certificate(base64.b64decode(c))
        for c in answer["registrationState"]["issuedCertificateChain"]
    ]


def save_chain(folder: Path, name: str, chain: list[x509.Certificate]) -> Path:
    path = folder / f"{name}.chain.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return path


def hub_client(world: World, device_id: str, chain: Path, key: Path) -> RawClient:
    host = world.hub.host_name
    return RawClient(
        f"{host}:{world.cloud.mqtt_port}",
        device_id,
        f"{host}/{device_id}/?api-version={HUB_API}",
        trust_pem=world.cloud.trust_pem,
        cert_file=chain,
        key_file=key,
    )


def renew(client: RawClient, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
    client.publish(f"$iothub/credentials/POST/issueCertificate/?$rid={rid}", body)
    return next_answer(client, rid)


def next_answer(client: RawClient, rid: str) -> tuple[int, Any]:
    topic, answer = client.next("$iothub/credentials/res/")
    assert f"$rid={rid}" in topic, topic
    return status_of(topic), answer


# -- the walk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bootstrap", ["x509", "symmetricKey"])
def test_a_device_registers_with_a_csr_connects_with_the_chain_and_renews(
    world: World,
    bootstrap: str,
    tmp_path: Path,
    run_openssl: RunOpenSSL,
    openssl_output: OpenSSLOutput,
) -> None:
    device_id = f"wire-{bootstrap.lower()}"
    key, csr = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, device_id, "prime256v1")
    dps = dps_client(world, device_id, tmp_path, bootstrap)
    # The register body may leave out the registration id: the CONNECT named it.
    status, answer = register(dps, {"csr": csr, "payload": None})
    dps.close()
    assert status == 200, answer
    state = answer["registrationState"]
    assert (answer["status"], state["deviceId"]) == ("assigned", device_id)
    chain = chain_of(answer)
    assert len(chain) == 3
    leaf, issuing, root = chain
    # Leaf first, each issued by the next, ending with a self-signed root.
    for child, parent in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)
    root.verify_directly_issued_by(root)
    assert leaf.subject.rfc4514_string() == f"CN={device_id}"
    own_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert leaf.public_key() == own_key.public_key()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime.total_seconds() - VALIDITY_DAYS * 86_400) <= 600
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    # The hub trusts the policy's issuing CA: the identity is certificateAuthority.
    assert world.hub.device(device_id).authentication == "certificateAuthority"
    first_chain = save_chain(tmp_path, "first", chain)
    hub = hub_client(world, device_id, first_chain, key)
    assert hub.refused is None
    hub.subscribe("$iothub/credentials/res/#")
    new_key, new_csr = openssl_key_and_csr(
        run_openssl, openssl_output, tmp_path, device_id, "secp384r1"
    )
    status, accepted = renew(hub, "4711", {"id": device_id, "csr": new_csr})
    assert status == 202, accepted
    assert set(accepted) == {"correlationId", "operationExpires"}
    status, issued = next_answer(hub, "4711")
    assert status == 200, issued
    assert issued["correlationId"] == accepted["correlationId"]
    renewed = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in issued["certificates"]]
    assert (
        renewed[0].public_key()
        == serialization.load_pem_private_key(new_key.read_bytes(), None).public_key()
    )
    assert renewed[0].subject == leaf.subject
    hub.close()

    # The renewed chain works at once; the old one until it expires.
    second_chain = save_chain(tmp_path, "second", renewed)
    for path, private in ((second_chain, new_key), (first_chain, key)):
        again = hub_client(world, device_id, path, private)
        assert again.refused is None
        again.close()


def test_expired_issued_certificates_are_refused_after_the_clock_moves(
    tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    # Its own cloud: moving the clock would expire the other tests' credentials.
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("clock-hub")
        dps = cloud.create_dps("clock-dps")
        cloud.link_hub(dps, hub)
        namespace = cloud.create_device_registry_namespace("clock-ns", "westeurope")
        namespace.create_policy("short", validity_days=7)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        root = dpskit.CertificateAuthority.create_root("Clock Bootstrap Root")
        dps.prove_possession("bootstrap", root)
        dps.create_enrollment_group("g", ca_reference="bootstrap", credential_policy="short")
        world = World(cloud, dps, hub, root, "")
        key, csr = openssl_key_and_csr(
            run_openssl, openssl_output, tmp_path, "clock-dev", "prime256v1"
        )
        client = dps_client(world, "clock-dev", tmp_path, "x509")
        status, answer = register(client, {"registrationId": "clock-dev", "csr": csr})
        client.close()
        assert status == 200, answer
        chain = save_chain(tmp_path, "issued", chain_of(answer))
        ok = hub_client(world, "clock-dev", chain, key)
        assert ok.refused is None
        ok.close()
        cloud.advance_time(days=8)
        late = hub_client(world, "clock-dev", chain, key)
        # 5: not authorized, as IoT Hub refuses a certificate past its validity.
        assert late.refused == 5


# -- refusals ------------------------------------------------------------------------------------


def test_dps_refuses_bad_csrs_with_a_reason(
    world: World, tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    _, good = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, "bad-csr", "prime256v1")
    _, other_cn = openssl_key_and_csr(
        run_openssl, openssl_output, tmp_path, "someone-else", "prime256v1"
    )
    _, rsa_big = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, "bad-csr", "rsa:4096")
    der = bytearray(base64.b64decode(good))
    der[-5] ^= 0xFF  # inside the signature
    cases = {
        "not base64": "%%%not-base64%%%",
        "not PKCS#10": base64.b64encode(b"\x30\x03\x02\x01\x00").decode(),
        "bad signature": base64.b64encode(bytes(der)).decode(),
        "CN is not the registration id": other_cn,
        "RSA-4096": rsa_big,
    }
    for case, csr in cases.items():
        client = dps_client(world, "bad-csr", tmp_path, "x509")
        status, answer = register(client, {"registrationId": "bad-csr", "csr": csr})
        client.close()
        assert status == 400, (case, answer)
        assert 400_000 <= answer["errorCode"] < 401_000, (case, answer)
        assert answer["message"], case


def test_an_enrollment_without_a_policy_cannot_issue(
    world: World, tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    root = dpskit.CertificateAuthority.create_root("No Policy Root")
    world.dps.prove_possession("no-policy", root)
    world.dps.create_enrollment_group("no-policy", ca_reference="no-policy")
    device = root.issue_device("no-policy-dev")
    files = device.save(tmp_path / "np")
    _, csr = openssl_key_and_csr(
        run_openssl, openssl_output, tmp_path, "no-policy-dev", "prime256v1"
    )
    client = RawClient(
        dps_endpoint(world),
        "no-policy-dev",
        f"{world.dps.id_scope}/registrations/no-policy-dev/api-version={DPS_API}",
        trust_pem=world.cloud.trust_pem,
        cert_file=files["chain"],
        key_file=files["private_key"],
    )
    status, answer = register(client, {"registrationId": "no-policy-dev", "csr": csr})
    client.close()
    assert status == 400, answer
    assert "policy" in answer["message"].lower()


def test_the_hub_refuses_renewals_as_iot_hub_does(
    world: World, tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    device_id = "wire-refusals"
    key, csr = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, device_id, "prime256v1")
    dps = dps_client(world, device_id, tmp_path, "x509")
    status, answer = register(dps, {"registrationId": device_id, "csr": csr})
    dps.close()
    assert status == 200, answer
    chain = save_chain(tmp_path, "refusals", chain_of(answer))
    hub = hub_client(world, device_id, chain, key)
    assert hub.refused is None

    # Not subscribed yet: the answer waits until the device subscribes.
    hub.publish("$iothub/credentials/POST/issueCertificate/?$rid=0001", b"")
    assert hub.nothing("$iothub/credentials/res/")
    hub.subscribe("$iothub/credentials/res/#")
    status, body = next_answer(hub, "0001")
    assert (status, body["errorCode"]) == (400, 400004)

    for rid, payload, code in [
        ("0002", b"{not json", 400006),
        ("0003", {"id": "someone-else", "csr": csr}, 400004),
        ("0004", {"id": device_id, "csr": csr, "extra": True}, 400004),
        ("0005", {"id": device_id, "csr": csr, "replace": "-x-"}, 400004),
        ("0006", {"id": device_id, "csr": csr, "replace": "abcd-1234"}, 412001),
    ]:
        status, body = renew(hub, rid, payload)  # type: ignore[arg-type]
        assert body["errorCode"] == code, (rid, body)
        assert status == code // 1000
        assert {"errorCode", "message", "trackingId", "timestampUtc"} <= set(body)

    # A CSR that decodes but is not PKCS#10: accepted first, refused once examined.
    status, _ = renew(hub, "0007", {"id": device_id, "csr": base64.b64encode(b"junk").decode()})
    assert status == 202
    status, body = next_answer(hub, "0007")
    assert (status, body["errorCode"]) == (400, 400040)
    assert body["info"]["credentialError"]
    hub.close()


def test_a_strict_dps_takes_only_the_documented_p384_key(
    world: World, tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    world.dps.set_strict_csr_key_type(True)
    try:
        answers = {}
        for curve in ("prime256v1", "secp384r1"):
            device_id = f"strict-{curve}"
            _, csr = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, device_id, curve)
            client = dps_client(world, device_id, tmp_path, "x509")
            answers[curve] = register(client, {"registrationId": device_id, "csr": csr})
            client.close()
    finally:
        world.dps.set_strict_csr_key_type(False)
    assert answers["prime256v1"][0] == 400, answers
    assert answers["secp384r1"][0] == 200, answers


def test_one_renewal_at_a_time_and_replace_cancels_the_pending_one(
    world: World, tmp_path: Path, run_openssl: RunOpenSSL, openssl_output: OpenSSLOutput
) -> None:
    device_id = "wire-pending"
    key, csr = openssl_key_and_csr(run_openssl, openssl_output, tmp_path, device_id, "prime256v1")
    dps = dps_client(world, device_id, tmp_path, "x509")
    status, answer = register(dps, {"registrationId": device_id, "csr": csr})
    dps.close()
    assert status == 200, answer
    hub = hub_client(world, device_id, save_chain(tmp_path, "pending", chain_of(answer)), key)
    hub.subscribe("$iothub/credentials/res/#")
    world.hub.set_certificate_issuance_delay(3.0)
    try:
        assert renew(hub, "first-1", {"id": device_id, "csr": csr})[0] == 202
        status, busy = renew(hub, "second-2", {"id": device_id, "csr": csr})
        assert (status, busy["errorCode"]) == (409, 409005), busy
        assert busy["info"]["requestId"] == "first-1"
        assert {"operationExpires", "correlationId"} <= set(busy["info"])
        # Replacing the pending request by its id: the first one is cancelled, this one runs.
        status, accepted = renew(
            hub, "third-3", {"id": device_id, "csr": csr, "replace": "first-1"}
        )
        assert status == 202, accepted
    finally:
        world.hub.set_certificate_issuance_delay(0)
    status, issued = next_answer(hub, "third-3")
    assert status == 200, issued
    assert issued["correlationId"] == accepted["correlationId"]
    hub.close()
