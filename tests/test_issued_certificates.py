"""Certificates issued by DPS, from the device's side, against the real emulator: provisioning
with a CSR (X.509 and symmetric-key onboarding), the hub connection with the issued chain,
renewal through the hub, expiry after the cloud's clock moves (reconnection refused) and
re-provisioning; the fleet's rollover; and what the clients refuse before sending."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import dpskit


def _csr_pem(common_name: str, key_pem: str) -> bytes:
    """A CSR made by pyca/cryptography (OpenSSL): what a user brings from their own tools."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    request = builder.sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority]]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("issued-hub")
        dps = cloud.create_dps("issued-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Bootstrap Root")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("bootstrap", ca_reference="root")
        yield cloud, dps, root


def test_the_key_of_a_csr_needs_the_csr(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, root = world
    device = root.issue_device("no-csr-1")
    with pytest.raises(dpskit.ConfigError, match="key is the private key of a CSR"):
        asyncio.run(
            dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=cloud.trust_pem,
                key=device.private_key_pem,
            )
        )


def test_a_csr_with_a_key_that_is_not_its_own_is_refused_before_sending(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
    tmp_path: Path,
) -> None:
    cloud, dps, root = world
    device = root.issue_device("csr-key-1")
    other = root.issue_device("csr-key-2")
    path = tmp_path / "csr.pem"
    path.write_bytes(_csr_pem("csr-key-1", device.private_key_pem))
    with pytest.raises(dpskit.ConfigError, match="not the CSR's"):
        asyncio.run(
            dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=cloud.trust_pem,
                csr=path,
                key=other.private_key_pem,
            )
        )


def test_renewal_needs_a_client_connected_for_it(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, root = world
    device = root.issue_device("plain-1")

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        assert result.issued_certificate is None
        assert result.issued_chain == ()
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            with pytest.raises(dpskit.ConfigError, match="without certificate renewal"):
                await client.renew_certificate()

    asyncio.run(scenario())
