"""Certificates issued by DPS, from the device's side, against the real emulator: provisioning
with a CSR (X.509 and symmetric-key onboarding), the hub connection with the issued chain,
renewal through the hub, expiry after the cloud's clock moves (reconnection refused) and
re-provisioning; the fleet's rollover; and what the clients refuse before sending."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

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


# --- against the emulator's issuance -------------------------------------------------------


@pytest.fixture(scope="module")
def issuing() -> Iterator[tuple[dpskit.LocalCloud, dpskit.Dps, Any, dpskit.CertificateAuthority]]:
    """A cloud whose DPS and hub are linked to a Device Registry namespace with a 30-day
    policy; an X.509 group on ``root`` and a symmetric-key group, both issuing."""
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("csr-hub")
        dps = cloud.create_dps("csr-dps")
        cloud.link_hub(dps, hub)
        namespace = cloud.create_device_registry_namespace("csr-ns")
        policy = namespace.create_policy("csr-policy", validity_days=30)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        root = dpskit.CertificateAuthority.create_root("Onboarding Root")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("x509-csr", ca_reference="root", credential_policy=policy.name)
        group = dps.create_enrollment_group(
            "sym-csr", symmetric_key=True, credential_policy=policy.name
        )
        yield cloud, dps, group, root


def _check_issued(
    result: dpskit.RegistrationResult, at: datetime | None = None, days: int = 30
) -> dpskit.DeviceCertificate:
    issued = result.issued_certificate
    assert issued is not None
    assert issued.registration_id == result.registration_id
    chain = list(result.issued_chain)
    assert len(chain) == 3
    assert chain[0] == issued.certificate
    assert chain[1:] == issued.issuers
    assert chain[0].common_name == result.registration_id
    assert chain[2].is_self_signed
    # The leaf chains to the namespace's root, through the policy's issuing CA.
    assert dpskit.verify_chain(chain[0], chain[1:2], chain[2:], at=at) == chain
    lifetime = chain[0].not_after - chain[0].not_before
    assert abs(lifetime.total_seconds() - days * 86_400) <= 600
    return issued


def test_x509_onboarding_with_a_csr_connects_with_the_issued_chain(
    issuing: tuple[dpskit.LocalCloud, dpskit.Dps, Any, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, _, root = issuing
    device = root.issue_device("csr-x509-1")
    hub = cloud.hubs()[0]

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            certificate=device,
            trust=cloud.trust_pem,
            csr=True,
            key_algorithm="ec-p384",
        )
        issued = _check_issued(result)
        assert issued.algorithm == "ec-p384"
        assert issued.certificate.thumbprint_sha1 != device.certificate.thumbprint_sha1
        # No credential given: the issued one; the hub trusts it through the policy's CA.
        async with dpskit.HubClient.connect(result, trust=cloud.trust_pem) as client:
            await client.send_telemetry({"issued": True})
        # The onboarding certificate is DPS's only: the hub has no identity for it.
        with pytest.raises(dpskit.AuthenticationError):
            await dpskit.HubClient.connect(result, certificate=device, trust=cloud.trust_pem)

    asyncio.run(scenario())
    assert hub.device("csr-x509-1").authentication == "certificateAuthority"


def test_symmetric_key_onboarding_with_your_own_csr(
    issuing: tuple[dpskit.LocalCloud, dpskit.Dps, Any, dpskit.CertificateAuthority],
    tmp_path: Path,
) -> None:
    cloud, dps, group, root = issuing
    key = root.issue_device("key-holder").private_key_pem
    csr = tmp_path / "csr-sym-1.csr.pem"
    csr.write_bytes(_csr_pem("csr-sym-1", key))

    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            registration_id="csr-sym-1",
            group_key=group.primary_key,
            trust=cloud.trust_pem,
            csr=csr,
            key=key,
        )
        issued = _check_issued(result)
        assert issued.private_key_pem == key
        async with dpskit.HubClient.connect(result, trust=cloud.trust_pem) as client:
            await client.send_telemetry({"issued": True})
        # Without its key, the chain comes back alone.
        alone = await dpskit.provision(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            registration_id="csr-sym-1",
            group_key=group.primary_key,
            trust=cloud.trust_pem,
            csr=csr.read_bytes(),
        )
        assert alone.issued_certificate is None
        assert len(alone.issued_chain) == 3

    asyncio.run(scenario())


def test_renewal_expiry_and_reprovisioning_in_the_clouds_time(
    issuing: tuple[dpskit.LocalCloud, dpskit.Dps, Any, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, group, _ = issuing

    async def register() -> dpskit.RegistrationResult:
        return await dpskit.provision(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            registration_id="csr-renew-1",
            group_key=group.primary_key,
            trust=cloud.trust_pem,
            csr=True,
            clock=cloud,
        )

    async def refused(result: dpskit.RegistrationResult, certificate: Any) -> None:
        with pytest.raises(dpskit.AuthenticationError):
            await dpskit.HubClient.connect(
                result, certificate=certificate, trust=cloud.trust_pem, timeout=10
            )

    async def scenario() -> None:
        result = await register()
        first = _check_issued(result)
        cloud.advance_time(days=20)
        async with dpskit.HubClient.connect(result, trust=cloud.trust_pem) as client:
            renewed = await client.renew_certificate()
            # The live connection stays up on the old certificate.
            await client.send_telemetry({"after": "renewal"})
        assert renewed.registration_id == "csr-renew-1"
        assert renewed.certificate.not_after > first.certificate.not_after
        assert renewed.private_key_pem != first.private_key_pem
        assert renewed.issuers == first.issuers
        # Both work until the first expires ...
        async with dpskit.HubClient.connect(result, certificate=renewed, trust=cloud.trust_pem):
            pass
        async with dpskit.HubClient.connect(result, certificate=first, trust=cloud.trust_pem):
            pass
        # ... then only the renewed one.
        cloud.advance_time(days=11)
        await refused(result, first)
        async with dpskit.HubClient.connect(
            result, certificate=renewed, trust=cloud.trust_pem
        ) as client:
            assert (await client.renew_certificate(key_algorithm="ec-p384")).algorithm == "ec-p384"
        # Past every certificate: only DPS, with the onboarding key, brings the device back.
        cloud.advance_time(days=91)
        await refused(result, renewed)
        again = await register()
        fresh = _check_issued(again, at=cloud.now())
        assert fresh.certificate.not_before > renewed.certificate.not_after
        async with dpskit.HubClient.connect(again, trust=cloud.trust_pem) as client:
            await client.send_telemetry({"back": True})

    asyncio.run(scenario())


def test_a_csr_against_an_enrollment_without_a_policy_is_refused(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, root = world
    device = root.issue_device("no-policy-1")
    with pytest.raises((dpskit.RegistrationFailedError, dpskit.ProtocolError)) as refused:
        asyncio.run(
            dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=cloud.trust_pem,
                csr=True,
            )
        )
    assert "polic" in str(refused.value)


def test_a_fleet_issued_certificates_rolls_over(
    issuing: tuple[dpskit.LocalCloud, dpskit.Dps, Any, dpskit.CertificateAuthority],
) -> None:
    cloud, dps, group, _ = issuing
    fleet = dpskit.Fleet(
        dps, group_key=group, count=4, prefix="csr-fleet-", issue_certificates=True
    )
    first = fleet.run(progress=False)
    assert first.completed == 4
    assert first.renewals == 0
    assert first.expiring_within(31, now=cloud.now()) == 4
    assert first.expiring_within(29, now=cloud.now()) == 0
    cloud.advance_time(days=25)
    report = fleet.rollover(progress=False)
    assert report.completed == 4, report.summary()
    assert report.renewals == 4
    assert report.renewal_failures == {}
    # The renewed certificates run 30 days from the cloud's now.
    assert report.expiring_within(10, now=cloud.now()) == 0
    frame = report.to_pandas()
    assert frame["renewed"].all()
    assert (frame["certificate_not_after"] > cloud.now()).all()
    with pytest.raises(dpskit.ConfigError, match="issue_certificates"):
        dpskit.Fleet(dps, group_key=group, count=1).rollover()


# --- the command line ----------------------------------------------------------------------


def test_the_csr_demo_issues_renews_and_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dpskit.cli import main

    assert main(["demo", "--csr", "--dir", str(tmp_path / "demo"), "--devices", "2"]) == 0
    out = capsys.readouterr().out
    for n in range(1, 9):
        assert f"[{n}/8]" in out
    assert out.count("-> demo-ns demo-policy Issuing CA -> demo-ns Root CA") == 2
    assert out.count("renewed, valid until") == 2
    assert out.count("refused (AuthenticationError)") == 2
    assert "Done in" in out
    issued = tmp_path / "demo" / "certs" / "issued"
    device = dpskit.DeviceCertificate.load(
        issued / "demo-csr-001.fullchain.pem", issued / "demo-csr-001.key.pem"
    )
    assert device.certificate.issuer_common_name == "demo-ns demo-policy Issuing CA"
    assert main(["demo", "--csr", "--azure", "--dir", str(tmp_path / "none")]) == 2
    assert "embedded local cloud only" in capsys.readouterr().err


def test_device_provision_with_a_csr_writes_the_issued_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dpskit.cli import main

    certs = tmp_path / "certs"
    root = dpskit.CertificateAuthority.create_root("CLI Onboarding Root")
    root.issue_device("cli-csr-1").save(certs, name="cli-csr-1")
    state = tmp_path / "cloud"
    with dpskit.LocalCloud(state, port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("cli-csr-hub")
        dps = cloud.create_dps("cli-csr-dps")
        cloud.link_hub(dps, hub)
        namespace = cloud.create_device_registry_namespace("cli-ns")
        namespace.create_policy("cli-policy", validity_days=7)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        dps.prove_possession("root", root)
        dps.create_enrollment_group("g", ca_reference="root", credential_policy="cli-policy")
        issued_dir = tmp_path / "issued"
        common = ["cli-csr-1", "--certs", str(certs), "--local", str(state), "--csr"]
        options = ["--key-algorithm", "ec-p384", "--issued-dir", str(issued_dir), "--json"]
        status = main(["device", "provision", *common, *options])
        out = capsys.readouterr().out
        assert status == 0
        result = json.loads(out)
        assert result["issuedCertificate"]["issuer"] == "CN=cli-ns cli-policy Issuing CA"
        files = result["issuedCertificate"]["files"]
        key = Path(files["private_key"])
        assert key.parent == issued_dir
        assert key.stat().st_mode & 0o777 == 0o600
        saved = dpskit.DeviceCertificate.load(files["full_chain"], key)
        assert saved.algorithm == "ec-p384"
        assert len(saved.issuers) == 2
        # `run` connects with the issued certificate (the onboarding one has no identity).
        assert main(["device", "run", *common, "--count", "2", "--interval", "0"]) == 0
        assert "2 messages acknowledged" in capsys.readouterr().out
