"""Tests of the ``dpskit`` command line, run in-process on real files (and once as a process)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

import dpskit
from conftest import port_is_free
from dpskit.cli import main

VERIFICATION_CODE = "4F2D7E1C0A9B8F6E5D4C3B2A19081726354A5B6C7D8E9F00"
PFX_PASSWORD = "pfx-Pa55word-never-printed"
KEY_PASSWORD = "key-Pa55word-never-printed"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def spki(key_or_cert: x509.Certificate | PrivateKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER of a cryptography certificate or private key."""
    return key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``dpskit argv...`` in-process; return (status, stdout, stderr)."""
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with root.* and intermediate.*, made by the CLI once for the module."""
    folder = tmp_path_factory.mktemp("pki")
    assert main(["certs", "root", "--dir", str(folder)]) == 0
    assert main(["certs", "intermediate", "--dir", str(folder)]) == 0
    return folder


# --- basics --------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.startswith("dpskit ")


def test_help_lists_commands_and_hides_empty_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "certs" in out
    assert "demo" in out
    status, out, _ = run(capsys, "certs", "root", "--help")
    assert status == 0
    assert "--key-password-env" in out
    assert "(default: 3650)" in out
    assert "default: None" not in out
    assert "default: False" not in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys)
    assert status == 2
    assert "usage: dpskit" in out
    status, out, _ = run(capsys, "certs")
    assert status == 2
    assert "usage: dpskit certs" in out


def test_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "certs", "devices")  # neither --count nor --ids-file
    assert status == 2
    assert "--count" in err


# --- the walkthrough with default paths ----------------------------------------------------


def test_walkthrough_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "certs", "root")
    assert status == 0
    assert "dpskit Test Root CA" in out
    certs = tmp_path / "certs"
    for suffix in ("cert", "key", "chain", "fullchain"):
        assert (certs / f"root.{suffix}.pem").is_file()
    assert mode(certs / "root.key.pem") == 0o600

    status, out, _ = run(capsys, "certs", "intermediate")
    assert status == 0
    assert "dpskit Test Intermediate CA" in out
    assert mode(certs / "intermediate.key.pem") == 0o600
    root = dpskit.Certificate.load(certs / "root.cert.pem")
    intermediate = dpskit.Certificate.load(certs / "intermediate.cert.pem")
    assert root.is_self_signed
    assert root.path_length is None
    assert intermediate.issuer == root.subject
    assert intermediate.is_ca
    assert intermediate.path_length == 0
    # The full chain lets the next step know the root.
    assert dpskit.Certificate.load_all(certs / "intermediate.fullchain.pem") == [
        intermediate,
        root,
    ]

    status, out, _ = run(capsys, "certs", "device", "my-device-01")
    assert status == 0
    devices = certs / "devices"
    leaf = dpskit.Certificate.load(devices / "my-device-01.cert.pem")
    assert leaf.common_name == "my-device-01"
    assert leaf.issuer == intermediate.subject
    assert not leaf.is_ca
    assert "clientAuth" in leaf.extended_key_usage
    assert mode(devices / "my-device-01.key.pem") == 0o600
    assert mode(devices / "my-device-01.pfx") == 0o600
    assert dpskit.Certificate.load_all(devices / "my-device-01.fullchain.pem") == [
        leaf,
        intermediate,
        root,
    ]
    pfx = pkcs12.load_key_and_certificates((devices / "my-device-01.pfx").read_bytes(), b"")
    assert pfx[1] is not None
    assert pfx[1].subject.rfc4514_string() == "CN=my-device-01"

    # verify finds certs/root.cert.pem by default.
    status, out, _ = run(capsys, "certs", "verify", devices / "my-device-01.chain.pem")
    assert status == 0, out
    assert out.startswith("OK")


def test_ca_is_not_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "certs", "root", "--dir", tmp_path)[0] == 0
    before = (tmp_path / "root.key.pem").read_bytes()
    status, _, err = run(capsys, "certs", "root", "--dir", tmp_path)
    assert status == 1
    assert "--force" in err
    assert (tmp_path / "root.key.pem").read_bytes() == before
    assert run(capsys, "certs", "root", "--dir", tmp_path, "--force")[0] == 0
    assert (tmp_path / "root.key.pem").read_bytes() != before


def test_root_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run(
        capsys,
        "certs",
        "root",
        "--dir",
        tmp_path,
        "--name",
        "contoso",
        "--cn",
        "Contoso Root",
        "--org",
        "Contoso",
        "--algorithm",
        "ec-p384",
        "--days",
        "100",
        "--path-length",
        "2",
    )
    assert status == 0
    cert = dpskit.Certificate.load(tmp_path / "contoso.cert.pem")
    assert cert.common_name == "Contoso Root"
    assert "O=Contoso" in cert.subject
    assert cert.key_algorithm == "ec-p384"
    assert cert.path_length == 2
    assert (cert.not_after - cert.not_before).days == 100


# --- encrypted CA keys ---------------------------------------------------------------------


def test_encrypted_ca_keys_via_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DPSKIT_TEST_KEY_PW", KEY_PASSWORD)
    status, out, err = run(
        capsys, "certs", "root", "--dir", tmp_path, "--key-password-env", "DPSKIT_TEST_KEY_PW"
    )
    assert status == 0
    assert KEY_PASSWORD not in out + err
    assert "$DPSKIT_TEST_KEY_PW" in out
    assert "ENCRYPTED PRIVATE KEY" in (tmp_path / "root.key.pem").read_text()
    assert mode(tmp_path / "root.key.pem") == 0o600

    # Without the password the issuer cannot be loaded.
    status, _, err = run(capsys, "certs", "intermediate", "--dir", tmp_path)
    assert status == 1
    assert err.startswith("error:")
    assert "Traceback" not in err

    status, out, err = run(
        capsys,
        "certs",
        "intermediate",
        "--dir",
        tmp_path,
        "--issuer-key-password-env",
        "DPSKIT_TEST_KEY_PW",
    )
    assert status == 0, err
    assert KEY_PASSWORD not in out + err


def test_missing_password_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(
        capsys, "certs", "root", "--dir", tmp_path, "--key-password-env", "DPSKIT_NO_SUCH_VAR_42"
    )
    assert status == 1
    assert err.startswith("error:")
    assert "DPSKIT_NO_SUCH_VAR_42" in err
    assert not (tmp_path / "root.key.pem").exists()


# --- devices -------------------------------------------------------------------------------


def manifest_path(value: str, out: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() or path.exists() else out / path


def test_devices_count_with_csv_manifest(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "fleet"
    status, out, _ = run(
        capsys, "certs", "devices", "--count", "20", "--dir", pki, "--out", out_dir
    )
    assert status == 0
    assert "20 device certificates" in out
    assert "devices/s" in out
    assert "manifest.csv" in out

    with (out_dir / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["registration_id"] for row in rows] == [f"device-{n:05d}" for n in range(1, 21)]
    intermediate = dpskit.Certificate.load(pki / "intermediate.cert.pem")
    for row in rows:
        cert_file = manifest_path(row["certificate_path"], out_dir)
        key_file = manifest_path(row["private_key_path"], out_dir)
        assert cert_file.resolve() == (out_dir / f"{row['registration_id']}.cert.pem").resolve()
        cert = dpskit.Certificate.load(cert_file)
        assert cert.common_name == row["registration_id"]
        assert cert.issuer == intermediate.subject
        assert cert.serial_number == row["serial_number"]
        assert cert.thumbprint_sha1 == row["thumbprint_sha1"]
        assert cert.thumbprint_sha256 == row["thumbprint_sha256"]
        assert row["not_after"].endswith("Z")
        assert mode(key_file) == 0o600
        assert manifest_path(row["chain_path"], out_dir).is_file()
        # No pfx was asked for.
        assert not row["pkcs12_path"]
    assert not list(out_dir.glob("*.pfx"))


def test_devices_numbering_and_empty_password_pfx(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys,
        "certs",
        "devices",
        "--count",
        "2",
        "--prefix",
        "bot-",
        "--start",
        "7",
        "--width",
        "2",
        "--pkcs12",
        "--manifest",
        "none",
        "--dir",
        pki,
        "--out",
        tmp_path,
    )
    assert status == 0
    assert "manifest" not in out
    assert sorted(p.name for p in tmp_path.glob("*.pfx")) == ["bot-07.pfx", "bot-08.pfx"]
    assert not list(tmp_path.glob("manifest.*"))
    key, cert, _ = pkcs12.load_key_and_certificates((tmp_path / "bot-07.pfx").read_bytes(), b"")
    assert key is not None
    assert cert is not None
    assert mode(tmp_path / "bot-07.pfx") == 0o600


def test_devices_from_ids_file_with_json_manifest_and_pfx(
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# line-3 robots\nrobot-a\n\nrobot-b\nrobot-c\n")
    monkeypatch.setenv("DPSKIT_TEST_PFX_PW", PFX_PASSWORD)
    out_dir = tmp_path / "robots"
    status, out, err = run(
        capsys,
        "certs",
        "devices",
        "--ids-file",
        ids_file,
        "--dir",
        pki,
        "--out",
        out_dir,
        "--manifest",
        "json",
        "--pkcs12-password-env",
        "DPSKIT_TEST_PFX_PW",
    )
    assert status == 0, err
    assert PFX_PASSWORD not in out + err
    entries = json.loads((out_dir / "manifest.json").read_text())
    assert [entry["registration_id"] for entry in entries] == ["robot-a", "robot-b", "robot-c"]
    for entry in entries:
        pfx_file = manifest_path(entry["pkcs12_path"], out_dir)
        assert mode(pfx_file) == 0o600
        key, cert, extra = pkcs12.load_key_and_certificates(
            pfx_file.read_bytes(), PFX_PASSWORD.encode()
        )
        assert cert is not None
        assert key is not None
        assert spki(key) == spki(cert)
        assert cert.subject.rfc4514_string() == f"CN={entry['registration_id']}"
        assert extra  # the intermediate travels with the device


def test_devices_ids_file_errors(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("ok-1\nnot ok!\n")
    status, _, err = run(capsys, "certs", "devices", "--ids-file", bad, "--dir", pki)
    assert status == 1
    assert "line 2" in err
    duplicate = tmp_path / "dup.txt"
    duplicate.write_text("same\nsame\n")
    status, _, err = run(capsys, "certs", "devices", "--ids-file", duplicate, "--dir", pki)
    assert status == 1
    assert "duplicate" in err


def test_device_options(
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DPSKIT_TEST_PFX_PW", PFX_PASSWORD)
    status, out, err = run(
        capsys,
        "certs",
        "device",
        "sensor-7",
        "--dir",
        pki,
        "--out",
        tmp_path,
        "--algorithm",
        "rsa-2048",
        "--days",
        "30",
        "--pkcs12-password-env",
        "DPSKIT_TEST_PFX_PW",
        "--legacy-pkcs12",
    )
    assert status == 0, err
    assert PFX_PASSWORD not in out + err
    cert = dpskit.Certificate.load(tmp_path / "sensor-7.cert.pem")
    assert cert.key_algorithm == "rsa-2048"
    assert (cert.not_after - cert.not_before).days == 30
    key, leaf, _ = pkcs12.load_key_and_certificates(
        (tmp_path / "sensor-7.pfx").read_bytes(), PFX_PASSWORD.encode()
    )
    assert key is not None
    assert leaf is not None


# --- proof of possession -------------------------------------------------------------------


@pytest.mark.parametrize("issuer", ["root", "intermediate"])
def test_verification_certificate(
    pki: Path, tmp_path: Path, issuer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys,
        "certs",
        "verification",
        VERIFICATION_CODE,
        "--issuer",
        issuer,
        "--dir",
        pki,
        "--out",
        tmp_path,
    )
    assert status == 0
    path = tmp_path / f"verification-{issuer}.cert.pem"
    assert f"verification-{issuer}.cert.pem" in out
    cert = dpskit.Certificate.load(path)
    ca = dpskit.Certificate.load(pki / f"{issuer}.cert.pem")
    assert cert.common_name == VERIFICATION_CODE
    assert cert.issuer == ca.subject
    assert not cert.is_ca
    # Signed by that CA's key: it verifies against that CA alone.
    assert dpskit.verify_chain(cert, [], [ca])[-1] == ca


def test_verification_default_location(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run(capsys, "certs", "verification", VERIFICATION_CODE, "--dir", pki)
    assert status == 0
    assert (pki / "verification" / "verification-root.cert.pem").is_file()


# --- CSR -----------------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


@pytest.mark.openssl
@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line tool")
def test_sign_csr_made_by_openssl(
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert OPENSSL is not None
    key_file = tmp_path / "dev-csr-1.key.pem"
    csr_file = tmp_path / "dev-csr-1.csr.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=dev-csr-1",
            "-keyout",
            str(key_file),
            "-out",
            str(csr_file),
        ],
        check=True,
        capture_output=True,
    )
    device_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    intermediate = dpskit.Certificate.load(pki / "intermediate.cert.pem")

    # Default output: DIR/devices/CN.cert.pem, the CN taken from the CSR.
    status, out, err = run(capsys, "certs", "csr", csr_file, "--dir", pki)
    assert status == 0, err
    signed = dpskit.Certificate.load(pki / "devices" / "dev-csr-1.cert.pem")
    assert signed.common_name == "dev-csr-1"
    assert signed.issuer == intermediate.subject
    assert "clientAuth" in signed.extended_key_usage
    assert not signed.is_ca
    assert spki(x509.load_pem_x509_certificate(signed.pem.encode())) == spki(device_key)

    # --registration-id overrides the CN; --chain appends the issuer chain.
    out_file = tmp_path / "override.pem"
    status, _, err = run(
        capsys,
        "certs",
        "csr",
        csr_file,
        "--dir",
        pki,
        "--registration-id",
        "dev-csr-override",
        "--days",
        "10",
        "--chain",
        "--out",
        out_file,
    )
    assert status == 0, err
    chain = dpskit.Certificate.load_all(out_file)
    assert chain[0].common_name == "dev-csr-override"
    assert (chain[0].not_after - chain[0].not_before).days == 10
    assert chain[1] == intermediate
    status, out, _ = run(capsys, "certs", "verify", out_file, "--ca-file", pki / "root.cert.pem")
    assert status == 0, out

    # The openssl key and the chained certificate make a PFX that pyca opens.
    monkeypatch.setenv("DPSKIT_TEST_PFX_PW", PFX_PASSWORD)
    pfx_file = tmp_path / "dev-csr-1.pfx"
    status, _, err = run(
        capsys,
        "certs",
        "pkcs12",
        "--cert",
        out_file,
        "--key",
        key_file,
        "--password-env",
        "DPSKIT_TEST_PFX_PW",
        "--out",
        pfx_file,
    )
    assert status == 0, err
    key, cert, extra = pkcs12.load_key_and_certificates(
        pfx_file.read_bytes(), PFX_PASSWORD.encode()
    )
    assert key is not None
    assert cert is not None
    assert spki(key) == spki(device_key)
    assert [c.subject.rfc4514_string() for c in extra] == [intermediate.subject]


# --- inspect -------------------------------------------------------------------------------


def test_inspect_text_and_json(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "certs", "device", "inspect-me", "--dir", pki, "--out", tmp_path)[0] == 0
    device_file = tmp_path / "inspect-me.cert.pem"
    chain_file = pki / "intermediate.fullchain.pem"

    status, out, _ = run(capsys, "certs", "inspect", chain_file, device_file)
    assert status == 0
    assert out.count("sha256 thumbprint") == 3
    assert "[1/2]" in out
    assert "[2/2]" in out
    assert "keyCertSign" in out
    assert "clientAuth" in out

    status, out, _ = run(capsys, "certs", "inspect", "--json", chain_file, device_file)
    assert status == 0
    records = json.loads(out)
    assert [r["file"] for r in records] == [str(chain_file)] * 2 + [str(device_file)]
    intermediate, root, device = records
    assert intermediate["is_ca"] is True
    assert intermediate["path_length"] == 0
    assert "keyCertSign" in intermediate["key_usage"]
    assert root["self_signed"] is True
    assert device["is_ca"] is False
    assert device["subject"] == "CN=inspect-me"
    assert device["extended_key_usage"] == ["clientAuth"]
    assert device["key_algorithm"] == "ec-p256"
    assert device["not_after"].endswith("Z")
    # Thumbprints and serial agree with pyca/cryptography.
    peer = x509.load_pem_x509_certificate(device_file.read_bytes())
    assert device["thumbprint_sha256"] == peer.fingerprint(hashes.SHA256()).hex().upper()
    # SHA-1 thumbprints are what Azure shows; not used for security here.
    sha1 = peer.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert device["thumbprint_sha1"] == sha1
    assert int(device["serial_number"], 16) == peer.serial_number


def test_inspect_der(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    der_file = tmp_path / "root.der"
    der_file.write_bytes(dpskit.Certificate.load(pki / "root.cert.pem").der)
    status, out, _ = run(capsys, "certs", "inspect", "--json", der_file)
    assert status == 0
    assert json.loads(out)[0]["subject"] == "CN=dpskit Test Root CA"


# --- pkcs12 --------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_pkcs12_from_saved_device(
    pki: Path,
    tmp_path: Path,
    legacy: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "certs", "device", "pfx-dev", "--dir", pki, "--out", tmp_path)[0] == 0
    monkeypatch.setenv("DPSKIT_TEST_PFX_PW", PFX_PASSWORD)
    out_file = tmp_path / "bundle" / "pfx-dev.p12"
    argv: list[str | Path] = [
        "certs",
        "pkcs12",
        "--cert",
        tmp_path / "pfx-dev.chain.pem",
        "--key",
        tmp_path / "pfx-dev.key.pem",
        "--password-env",
        "DPSKIT_TEST_PFX_PW",
        "--out",
        out_file,
    ]
    if legacy:
        argv.append("--legacy")
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    assert PFX_PASSWORD not in out + err
    assert mode(out_file) == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(
        out_file.read_bytes(), PFX_PASSWORD.encode()
    )
    assert key is not None
    assert cert is not None
    assert spki(key) == spki(cert)
    assert cert.subject.rfc4514_string() == "CN=pfx-dev"
    # The chain came from the certificate file.
    intermediate = dpskit.Certificate.load(pki / "intermediate.cert.pem")
    assert [c.subject.rfc4514_string() for c in extra] == [intermediate.subject]


def test_pkcs12_rewrites_existing_file_private(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "certs", "device", "pfx-2", "--dir", pki, "--out", tmp_path)[0] == 0
    out_file = tmp_path / "existing.pfx"
    out_file.write_bytes(b"old")
    out_file.chmod(0o644)
    status, _, err = run(
        capsys,
        "certs",
        "pkcs12",
        "--cert",
        tmp_path / "pfx-2.cert.pem",
        "--key",
        tmp_path / "pfx-2.key.pem",
        "--chain",
        pki / "intermediate.fullchain.pem",
        "--out",
        out_file,
    )
    assert status == 0, err
    assert mode(out_file) == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(out_file.read_bytes(), b"")
    assert key is not None
    assert cert is not None
    assert len(extra) >= 1


# --- verify --------------------------------------------------------------------------------


def test_verify_success_and_wrong_ca(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "devices"
    assert run(capsys, "certs", "device", "verify-me", "--dir", pki, "--out", out_dir)[0] == 0
    leaf = out_dir / "verify-me.cert.pem"

    status, out, _ = run(
        capsys,
        "certs",
        "verify",
        leaf,
        "--chain",
        pki / "intermediate.cert.pem",
        "--ca-file",
        pki / "root.cert.pem",
    )
    assert status == 0
    assert out.startswith("OK")
    assert "CN=verify-me" in out
    assert "CN=dpskit Test Intermediate CA" in out
    assert "trust anchor" in out

    # A full chain file carries its own root, but trust still comes from --ca-file only.
    other = tmp_path / "other"
    assert run(capsys, "certs", "root", "--dir", other, "--cn", "Someone Else")[0] == 0
    status, out, err = run(
        capsys,
        "certs",
        "verify",
        out_dir / "verify-me.fullchain.pem",
        "--ca-file",
        other / "root.cert.pem",
    )
    assert status == 1
    assert out.startswith("FAILED")
    assert "reason" in out
    assert "Traceback" not in out + err

    status, out, _ = run(
        capsys,
        "certs",
        "verify",
        out_dir / "verify-me.fullchain.pem",
        "--ca-file",
        other / "root.cert.pem",
        "--ca-file",
        pki / "root.cert.pem",
    )
    assert status == 0, out


def test_verify_without_anchor(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        capsys, "certs", "verify", pki / "intermediate.cert.pem", "--dir", tmp_path
    )
    assert status == 1
    assert err.startswith("error:")
    assert "--ca-file" in err


# --- demo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--dir", "elsewhere", "--algorithm", "rsa-2048"]])
def test_demo(
    tmp_path: Path,
    options: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / (options[1] if options else "dpskit-demo")
    status, out, err = run(capsys, "demo", *options)
    assert status == 0, err
    assert "root.{cert,key,chain,fullchain}.pem" in out
    assert "demo-device-001.{cert,key,chain,fullchain}.pem + .pfx" in out
    assert "DPS" in out
    for n in range(1, 10):
        assert f"[{n}/9]" in out
    assert out.count("assigned to ") == 3
    # Each device connected to its hub and every message it sent was stored.
    assert out.count("3 messages stored by the hub") == 3
    summary = out[out.index("Summary") :]
    for n in range(1, 4):
        assert re.search(rf"demo-device-{n:03d}\s+127\.0\.0\.2\s+assigned\s+3\n", summary)
    assert "Done in" in out
    assert "cloud->device  PUBLISH 200" in out
    assert (folder / "cloud" / "state.sqlite3").exists()
    certs = folder / "certs"
    root = dpskit.Certificate.load(certs / "root.cert.pem")
    for name in ("root", "intermediate"):
        pop = dpskit.Certificate.load(certs / "verification" / f"verification-{name}.cert.pem")
        assert pop.issuer == dpskit.Certificate.load(certs / f"{name}.cert.pem").subject
    assert root.key_algorithm == (options[-1] if options else "ec-p256")
    for n in range(1, 4):
        stem = certs / "devices" / f"demo-device-{n:03d}"
        assert mode(Path(f"{stem}.key.pem")) == 0o600
        assert mode(Path(f"{stem}.pfx")) == 0o600
        chain = dpskit.Certificate.load_all(f"{stem}.fullchain.pem")
        assert len(chain) == 3
        assert dpskit.verify_chain(chain[0], chain[1:2], [root])[-1] == root
        assert f"demo-device-{n:03d}" in out
    assert mode(certs / "root.key.pem") == 0o600
    assert mode(certs / "intermediate.key.pem") == 0o600


def test_demo_on_azure_takes_the_arm_path_and_deletes_what_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Azure is out of reach here: the emulator's ARM stands in for management.azure.com, on
    # 8883 because AzureCloud's devices dial Azure's port.
    if not port_is_free(8883):
        pytest.skip("port 8883 is taken")
    with dpskit.LocalCloud(tmp_path / "stand-in", port=8883, poll_retry_after=0) as stand_in:
        trust = tmp_path / "stand-in-ca.pem"
        trust.write_text(stand_in.trust_pem)
        monkeypatch.setenv("DEMO_ARM_TOKEN", "a-bearer-token")
        status, out, err = run(
            capsys,
            # The stand-in answers for its own subscription and resource group only.
            *("demo", "--azure", "--subscription", stand_in.subscription_id),
            *("--resource-group", stand_in.resource_group),
            *("--token-env", "DEMO_ARM_TOKEN", "--arm-endpoint", stand_in.arm_endpoint),
            *("--trust-file", trust, "--dir", tmp_path / "demo", "--devices", "2"),
        )
        assert status == 0, out + err
        assert "walkthrough against Azure" in out
        assert "a few minutes on Azure" in out
        summary = out[out.index("Summary") :]
        assert len(re.findall(r"demo-device-00\d\s+127\.0\.0\.\d+\s+assigned\s+3\n", summary)) == 2
        assert re.search(r"deleted demo-dps-[0-9a-f]{6}", out)
        assert re.search(r"deleted demo-hub-[0-9a-f]{6}", out)
        assert stand_in.all_dps() == []
        assert stand_in.hubs() == []
        assert "The exchange of" not in out  # the emulator's trace is not an Azure feature
    # Without a subscription it stops before creating anything.
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    status, _, err = run(capsys, "demo", "--azure", "--dir", tmp_path / "none")
    assert status == 1
    assert "--subscription" in err


# --- errors --------------------------------------------------------------------------------


def test_missing_issuer_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "certs", "device", "dev-1", "--dir", tmp_path / "nothing")
    assert status == 1
    assert out == ""
    assert err.startswith("error:")
    assert "intermediate.cert.pem" in err
    assert "Traceback" not in err


def test_invalid_registration_id(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("has space", "x" * 65, "ends-with-dot."):
        status, _, err = run(capsys, "certs", "device", bad, "--dir", pki, "--out", tmp_path)
        assert status == 1, bad
        assert err.startswith("error:")
        assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "certs", "inspect", tmp_path / "absent.pem")
    assert status == 1
    assert err.startswith("error:")
    assert "absent.pem" in err


def test_not_a_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    status, _, err = run(capsys, "certs", "inspect", junk)
    assert status == 1
    assert err.startswith("error:")


# --- as a process --------------------------------------------------------------------------


def test_python_dash_m_dpskit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dpskit", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("dpskit ")

    done = subprocess.run(
        [sys.executable, "-m", "dpskit", "certs", "root", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "root.cert.pem").is_file()

    done = subprocess.run(
        [sys.executable, "-m", "dpskit", "certs", "device", "d1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error:")
    assert "Traceback" not in done.stderr


def test_console_script_is_declared() -> None:
    scripts = metadata.entry_points(group="console_scripts", name="dpskit")
    if not scripts:
        pytest.skip("dpskit is not installed with its metadata")
    assert [entry.value for entry in scripts] == ["dpskit.cli:main"]
