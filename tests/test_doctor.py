"""``dpskit.doctor`` against the real emulator: each classic cause of a refused device is built
for real (a DPS of its own, real certificates, real files) and must be diagnosed as that cause
and no other; the traced attempt must be refused by the emulator and name the same cause. A
healthy device is diagnosed healthy, before and after it provisions."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dpskit

ROOTS = Path(__file__).parent / "data" / "azure-roots"
BALTIMORE = ROOTS / "Baltimore_CyberTrust_Root.pem"
DIGICERT_G2 = ROOTS / "DigiCert_Global_Root_G2.pem"


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as running:
        running.create_hub("doctor-hub")
        yield running


@dataclass
class Setup:
    """A DPS of the test's own (so no other test's enrollment can match its device), a root
    CA with an intermediate, and the hub."""

    cloud: dpskit.LocalCloud
    dps: dpskit.Dps
    hub: dpskit.Hub
    root: dpskit.CertificateAuthority
    intermediate: dpskit.CertificateAuthority

    def verified_group(self, **options: object) -> None:
        """The walkthrough's set-up: the root proven, a group naming it."""
        self.dps.prove_possession("root", self.root)
        self.dps.create_enrollment_group("devices", ca_reference="root", **options)  # type: ignore[arg-type]


def _setup(cloud: dpskit.LocalCloud, *, link: bool = True) -> Setup:
    dps = cloud.create_dps(f"doctor-{secrets.token_hex(4)}")
    hub = cloud.hub("doctor-hub")
    if link:
        cloud.link_hub(dps, hub)
    root = dpskit.CertificateAuthority.create_root("Doctor Root CA")
    return Setup(cloud, dps, hub, root, root.create_intermediate("Doctor Intermediate CA"))


@pytest.fixture
def setup(cloud: dpskit.LocalCloud) -> Setup:
    return _setup(cloud)


def _diagnose(
    setup: Setup, device: dpskit.DeviceCertificate | str | Path, **options: object
) -> dpskit.DoctorReport:
    return dpskit.doctor(device, dps=setup.dps, connect=True, **options)  # type: ignore[arg-type]


def _assert_only(report: dpskit.DoctorReport, cause: str, *, refused: bool = True) -> None:
    """The report names ``cause`` and nothing else, through a problem check; when the device
    was tried, the emulator refused it and the attempt names the same cause."""
    assert report.causes == (cause,), str(report)
    assert not report.healthy
    assert [c.cause for c in report.problems] == [cause] * len(report.problems), str(report)
    # Failing checks come first.
    assert report.checks[0].verdict == "problem"
    if refused:
        assert report.attempt is not None
        assert not report.attempt.succeeded, str(report)
        assert cause in report.attempt.causes, str(report)


def _past(days: int) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)


def test_a_healthy_device_is_healthy_before_and_after_it_provisions(
    setup: Setup, tmp_path: Path
) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("healthy-001")
    report = _diagnose(setup, device, trust=setup.cloud.trust_pem)
    assert report.healthy, str(report)
    assert report.causes == ()
    assert report.problems == ()
    assert report.registration_id == "healthy-001"
    assert report.check("enrollment.match").verdict == "ok"
    assert "devices" in report.check("enrollment.match").evidence
    assert report.check("server.trust").verdict == "ok"
    attempt = report.attempt
    assert attempt is not None
    assert attempt.succeeded
    assert attempt.assigned_hub == setup.hub.host_name
    assert attempt.device_id == "healthy-001"
    steps = [step.step for step in attempt.trace]
    for expected in ("dial", "tls", "connect", "register"):
        assert expected in steps, steps
    # The trace never carries a secret: no key material.
    assert "PRIVATE KEY" not in json.dumps(report.to_dict())
    # Once provisioned, the record and the hub identity it made are checked too.
    again = dpskit.doctor(device, dps=setup.dps)
    assert again.healthy, str(again)
    assert again.check("registration.record").verdict == "ok"
    assert again.check("hub.identity").verdict == "ok"
    # The same device held as files (certificate + chain + key) is as healthy.
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "device.pem").write_text(device.certificate_pem)
    (folder / "chain.pem").write_text(device.chain_pem[len(device.certificate_pem) :])
    (folder / "device.key").write_text(device.private_key_pem)
    from_files = dpskit.doctor(
        folder / "device.pem", chain=folder / "chain.pem", key=folder / "device.key", dps=setup.dps
    )
    assert from_files.healthy, str(from_files)
    # The report reads as JSON with every check.
    as_json = json.loads(from_files.to_json())
    assert {c["id"] for c in as_json["checks"]} >= {"chain.order", "key.match", "enrollment.match"}


def test_wrong_order(setup: Setup, tmp_path: Path) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("order-001")
    intermediate_pem = device.chain_pem[len(device.certificate_pem) :]
    (tmp_path / "device.pem").write_text(intermediate_pem + device.certificate_pem)
    (tmp_path / "device.key").write_text(device.private_key_pem)
    report = dpskit.doctor(
        tmp_path / "device.pem", key=tmp_path / "device.key", dps=setup.dps, connect=True
    )
    # The device's TLS stack would present the intermediate as its own certificate: no
    # attempt can be made as the device holds it, and the order is the one cause.
    _assert_only(report, "chain-order", refused=False)
    assert report.attempt is not None
    assert not report.attempt.succeeded


def test_missing_intermediate(setup: Setup) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("leaf-only-001")
    leaf_only = dpskit.DeviceCertificate.from_pem(device.certificate_pem, device.private_key_pem)
    report = _diagnose(setup, leaf_only)
    _assert_only(report, "missing-intermediate")
    assert report.attempt is not None
    assert report.attempt.error_code == 401002


def test_pkcs12_without_the_chain(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("pfx-001")
    leaf_only = dpskit.DeviceCertificate.from_pem(device.certificate_pem, device.private_key_pem)
    pfx = tmp_path / "device.pfx"
    pfx.write_bytes(leaf_only.to_pkcs12("s3cret"))
    monkeypatch.setenv("DEVICE_PFX_PASSWORD", "s3cret")
    report = _diagnose(setup, None, pkcs12=pfx, password_env="DEVICE_PFX_PASSWORD")  # type: ignore[arg-type]
    _assert_only(report, "pkcs12-without-chain")
    # The same file with its chain is healthy.
    whole = tmp_path / "whole.pfx"
    whole.write_bytes(device.to_pkcs12("s3cret"))
    assert dpskit.doctor(pkcs12=whole, password_env="DEVICE_PFX_PASSWORD", dps=setup.dps).healthy


def test_unverified_ca(setup: Setup) -> None:
    setup.dps.upload_ca_certificate("root", setup.root)
    setup.dps.create_enrollment_group("devices", ca_reference="root")
    report = _diagnose(setup, setup.intermediate.issue_device("unverified-001"))
    _assert_only(report, "unverified-ca")
    # Proof of possession mends it.
    setup.dps.prove_possession("root", setup.root)
    assert dpskit.doctor(setup.intermediate.issue_device("unverified-002"), dps=setup.dps).healthy


def test_wrong_ca_in_the_group(setup: Setup) -> None:
    # The device's root is uploaded and verified, but the group names another verified root.
    setup.dps.prove_possession("root", setup.root)
    other = dpskit.CertificateAuthority.create_root("Another Root CA")
    setup.dps.prove_possession("other", other)
    setup.dps.create_enrollment_group("devices", ca_reference="other")
    report = _diagnose(setup, setup.intermediate.issue_device("wrong-ca-001"))
    _assert_only(report, "wrong-ca-in-group")
    assert "Another Root CA" in report.check("enrollment.match").evidence


def test_cn_mismatch(setup: Setup) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("sensor-001")
    report = _diagnose(setup, device, registration_id="sensor-002")
    _assert_only(report, "cn-mismatch")
    assert report.registration_id == "sensor-002"


def test_expired_leaf(setup: Setup) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("expired-001", days=10, not_before=_past(20))
    report = _diagnose(setup, device)
    _assert_only(report, "expired-leaf")


def test_expired_intermediate(setup: Setup) -> None:
    setup.verified_group()
    old = setup.root.create_intermediate("Expired Intermediate CA", days=10, not_before=_past(20))
    device = old.issue_device("old-ica-001", days=365, not_before=_past(15))
    report = _diagnose(setup, device)
    _assert_only(report, "expired-intermediate")


def test_disabled_group(setup: Setup) -> None:
    setup.verified_group(provisioning_status="disabled")
    report = _diagnose(setup, setup.intermediate.issue_device("disabled-001"))
    _assert_only(report, "disabled-enrollment")


def test_no_linked_hub(cloud: dpskit.LocalCloud) -> None:
    setup = _setup(cloud, link=False)
    setup.verified_group()
    report = _diagnose(setup, setup.intermediate.issue_device("no-hub-001"))
    _assert_only(report, "no-linked-hub")


def test_stale_trust_bundle(setup: Setup, tmp_path: Path) -> None:
    setup.verified_group()
    device = setup.intermediate.issue_device("baltimore-001")
    report = _diagnose(setup, device, trust=BALTIMORE)
    # Against the local cloud the TLS handshake fails: the bundle is the one cause.
    _assert_only(report, "stale-trust-bundle")
    # Offline, for Azure's endpoints: the same verdict, and DigiCert Global Root G2 is fine.
    offline = dpskit.doctor(device, trust=BALTIMORE)
    assert offline.causes == ("stale-trust-bundle",), str(offline)
    assert "Baltimore" in offline.check("server.trust").evidence
    assert dpskit.doctor(device, trust=DIGICERT_G2).healthy
    # Azure's roots do not make a local cloud trusted: named, not silently accepted.
    assert dpskit.doctor(device, trust=DIGICERT_G2, dps=setup.dps).causes == ("untrusted-server",)


def test_an_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    broken = tmp_path / "device.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    report = dpskit.doctor(broken)
    assert report.causes == ("unreadable",), str(report)
    assert str(broken) in report.check("files.parse").evidence


def test_the_table_lists_failing_checks_first(setup: Setup) -> None:
    setup.verified_group(provisioning_status="disabled")
    report = dpskit.doctor(setup.intermediate.issue_device("table-001"), dps=setup.dps)
    table = str(report)
    assert table.index("enrollment.enabled") < table.index("files.parse")
    assert "disabled" in table
    assert asyncio.iscoroutinefunction(dpskit.doctor) is False
