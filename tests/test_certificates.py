"""pyca/cryptography is the peer: it must read everything dpskit writes and agree with what dpskit
reports about it. Also covers batch issuance, the on-disk layouts, round-trips and verify_chain."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import dpskit

PASSWORD = "Pa55-word"
MANIFEST_FIELDS = [
    "registration_id",
    "serial_number",
    "thumbprint_sha1",
    "thumbprint_sha256",
    "not_after",
    "certificate_path",
    "private_key_path",
    "chain_path",
    "pkcs12_path",
]
KEY_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}
EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- helpers ---------------------------------------------------------------------------------


def pyca(cert: dpskit.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.der)


def spki(key: object) -> bytes:
    """SubjectPublicKeyInfo DER of a pyca public key, private key or certificate."""
    if isinstance(key, x509.Certificate):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        key = key.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_key(pem: str | bytes, password: bytes | None = None) -> PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=password)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def canonical(key: PrivateKey) -> bytes:
    """pyca's PKCS#8 DER of a key: equal for equal keys whatever encoding we read them from."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def resolve(folder: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else folder / path


def pyca_key_usage(cert: x509.Certificate) -> set[str]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    return {name for attr, name in KEY_USAGE_NAMES.items() if getattr(ku, attr)}


def sign_with_pyca(
    subject_cn: str,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Build a certificate dpskit would never issue (e.g. signed by a leaf) for verify_chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256()), key


# --- pyca parses what we write ---------------------------------------------------------------


def test_certificate_pem_and_der_parse(ec_device: dpskit.DeviceCertificate) -> None:
    from_pem = x509.load_pem_x509_certificate(ec_device.certificate_pem.encode())
    from_der = x509.load_der_x509_certificate(ec_device.certificate_der)
    assert from_pem == from_der
    assert from_pem.public_bytes(serialization.Encoding.PEM).decode() == ec_device.certificate_pem
    assert ec_device.certificate.der == ec_device.certificate_der
    assert ec_device.certificate.pem == ec_device.certificate_pem


def test_private_key_pkcs8_pem_and_der(ec_device: dpskit.DeviceCertificate) -> None:
    pem = ec_device.private_key_pem
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pem.rstrip().endswith("-----END PRIVATE KEY-----")
    from_pem = load_key(pem)
    from_der = serialization.load_der_private_key(ec_device.private_key_der, password=None)
    assert isinstance(from_der, ec.EllipticCurvePrivateKey)
    assert canonical(from_pem) == canonical(from_der)
    # The key in the certificate is the public half of this private key.
    assert spki(from_pem) == spki(pyca(ec_device.certificate))


def test_encrypted_private_key(ec_device: dpskit.DeviceCertificate) -> None:
    pem = ec_device.encrypted_private_key_pem(PASSWORD)
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    key = load_key(pem, PASSWORD.encode())
    assert canonical(key) == canonical(load_key(ec_device.private_key_pem))
    assert load_key(ec_device.encrypted_private_key_pem(PASSWORD.encode()), PASSWORD.encode())
    with pytest.raises(ValueError, match=r"(?i)password|decrypt"):
        load_key(pem, b"wrong")


def test_chain_pems(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    leaf, inter, root = (pyca(c.certificate) for c in (ec_device, ec_intermediate, ec_root))
    assert x509.load_pem_x509_certificates(ec_device.chain_pem.encode()) == [leaf, inter]
    assert x509.load_pem_x509_certificates(ec_device.full_chain_pem.encode()) == [
        leaf,
        inter,
        root,
    ]
    assert x509.load_pem_x509_certificates(ec_intermediate.chain_pem.encode()) == [inter]
    assert x509.load_pem_x509_certificates(ec_intermediate.full_chain_pem.encode()) == [
        inter,
        root,
    ]
    assert ec_device.issuers[0] == ec_intermediate.certificate
    assert all(issuer.is_ca for issuer in ec_device.issuers)
    assert ec_intermediate.issuers[0] == ec_root.certificate


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_pkcs12_both_flavours(
    legacy: bool, ec_device: dpskit.DeviceCertificate, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    data = ec_device.to_pkcs12(PASSWORD, legacy=legacy)
    key, cert, additional = pkcs12.load_key_and_certificates(data, PASSWORD.encode())
    assert cert == pyca(ec_device.certificate)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert spki(key) == spki(cert)
    assert canonical(key) == canonical(load_key(ec_device.private_key_pem))
    # The PFX carries every known issuer (intermediates and root) after the leaf, in order.
    full_chain = x509.load_pem_x509_certificates(ec_device.full_chain_pem.encode())
    assert additional == full_chain[1:]
    assert additional[0] == pyca(ec_intermediate.certificate)
    with pytest.raises(ValueError):  # noqa: PT011 - pyca's message varies between versions
        pkcs12.load_key_and_certificates(data, b"wrong")


def test_pkcs12_default_password_is_empty(ec_device: dpskit.DeviceCertificate) -> None:
    key, cert, _ = pkcs12.load_key_and_certificates(ec_device.to_pkcs12(), b"")
    assert cert == pyca(ec_device.certificate)
    assert key is not None


# --- what dpskit reports agrees with pyca ----------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-2048"])
def test_properties_agree_with_pyca(
    algorithm: str, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    device = ec_intermediate.issue_device(f"props-{algorithm}", algorithm=algorithm)
    cert = device.certificate
    peer = pyca(cert)

    assert device.registration_id == f"props-{algorithm}"
    assert device.algorithm == algorithm
    assert cert.key_algorithm == algorithm
    assert cert.common_name == device.registration_id
    assert cert.subject == f"CN={device.registration_id}"
    cn = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [device.registration_id]
    assert cert.issuer == ec_intermediate.certificate.subject
    assert cert.issuer_common_name == ec_intermediate.common_name

    assert cert.thumbprint_sha1 == peer.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert cert.thumbprint_sha256 == peer.fingerprint(hashes.SHA256()).hex().upper()
    assert re.fullmatch(r"[0-9A-F]+", cert.serial_number)
    assert int(cert.serial_number, 16) == peer.serial_number

    assert cert.not_before == peer.not_valid_before_utc
    assert cert.not_after == peer.not_valid_after_utc
    assert cert.not_before.utcoffset() == timedelta(0)
    assert cert.not_after - cert.not_before == timedelta(days=365)

    bc = peer.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert cert.is_ca is bc.value.ca is False
    assert cert.path_length is None
    ku = peer.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert set(cert.key_usage) == pyca_key_usage(peer) == {"digitalSignature"}
    eku = peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert cert.extended_key_usage == [EKU_NAMES[oid] for oid in eku] == ["clientAuth"]

    ski = peer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = peer.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert cert.subject_key_identifier is not None
    assert cert.subject_key_identifier.replace(":", "").upper() == ski.digest.hex().upper()
    assert cert.authority_key_identifier is not None
    assert aki.key_identifier is not None
    assert (
        cert.authority_key_identifier.replace(":", "").upper() == aki.key_identifier.hex().upper()
    )
    assert cert.authority_key_identifier == ec_intermediate.certificate.subject_key_identifier
    assert not cert.is_self_signed

    public_key = peer.public_key()
    if algorithm == "rsa-2048":
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 2048
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert public_key.curve.name == {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}[algorithm]
    assert spki(load_key(device.private_key_pem)) == spki(peer)


def test_ca_properties_agree_with_pyca(
    ec_root: dpskit.CertificateAuthority, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    for ca, path_length in ((ec_root, None), (ec_intermediate, 0)):
        cert = ca.certificate
        peer = pyca(cert)
        bc = peer.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical
        assert cert.is_ca is bc.value.ca is True
        assert cert.path_length == bc.value.path_length == path_length
        ku = peer.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical
        assert set(cert.key_usage) == pyca_key_usage(peer)
        assert set(cert.key_usage) == {"keyCertSign", "cRLSign", "digitalSignature"}
        assert cert.common_name == ca.common_name
        assert spki(load_key(ca.private_key_pem)) == spki(peer)
        assert ca.algorithm == cert.key_algorithm == "ec-p256"

    root = ec_root.certificate
    assert root.subject == "CN=dpskit Test Root CA, O=dpskit"
    assert root.issuer == root.subject
    assert root.is_self_signed
    assert root.authority_key_identifier is None
    assert root.not_after - root.not_before == timedelta(days=3650)
    inter = ec_intermediate.certificate
    assert not inter.is_self_signed
    assert inter.authority_key_identifier == root.subject_key_identifier
    assert inter.not_after - inter.not_before == timedelta(days=1825)


def test_subject_with_organization() -> None:
    ca = dpskit.CertificateAuthority.create_root("Contoso Root CA", organization="Contoso")
    assert ca.certificate.subject == "CN=Contoso Root CA, O=Contoso"
    peer = pyca(ca.certificate)
    org = peer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in org] == ["Contoso"]


def test_is_valid_at(ec_device: dpskit.DeviceCertificate) -> None:
    cert = ec_device.certificate
    assert cert.is_valid_at()
    assert cert.is_valid_at(datetime.now(timezone.utc))
    assert not cert.is_valid_at(cert.not_after + timedelta(days=1))
    assert not cert.is_valid_at(cert.not_before - timedelta(days=1))


def test_equality_and_hash(
    ec_device: dpskit.DeviceCertificate, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    a = dpskit.Certificate.from_pem(ec_device.certificate_pem)
    b = dpskit.Certificate.from_der(ec_device.certificate_der)
    assert a == b
    assert hash(a) == hash(b)
    assert a != ec_intermediate.certificate
    assert len({a, b, ec_intermediate.certificate}) == 2


def test_certificate_save_load_and_chains(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path
) -> None:
    path = ec_device.certificate.save(tmp_path / "leaf.pem")
    assert path == tmp_path / "leaf.pem"
    assert path.read_text() == ec_device.certificate_pem
    assert dpskit.Certificate.load(path) == ec_device.certificate
    assert dpskit.Certificate.load(str(path)) == ec_device.certificate

    full = tmp_path / "full.pem"
    full.write_text(ec_device.full_chain_pem)
    expected = [ec_device.certificate, *ec_device.issuers]
    assert dpskit.Certificate.load_all(full) == expected
    assert dpskit.Certificate.from_pem_chain(ec_device.full_chain_pem) == expected
    assert dpskit.Certificate.from_pem_chain(ec_device.full_chain_pem.encode()) == expected


# --- batch issuance --------------------------------------------------------------------------


def test_issue_devices_order_and_uniqueness(ec_intermediate: dpskit.CertificateAuthority) -> None:
    ids = [f"fleet-{i:04d}" for i in range(500)]
    devices = ec_intermediate.issue_devices(ids)
    assert [d.registration_id for d in devices] == ids
    assert [d.certificate.common_name for d in devices] == ids
    assert len({d.certificate.serial_number for d in devices}) == 500
    assert len({d.private_key_der for d in devices}) == 500
    assert len({d.certificate.thumbprint_sha256 for d in devices}) == 500
    # Spot-check a few with pyca: the certificate carries its own private key's public half.
    for device in devices[::97]:
        assert spki(load_key(device.private_key_pem)) == spki(pyca(device.certificate))


def test_issue_devices_accepts_any_iterable(ec_intermediate: dpskit.CertificateAuthority) -> None:
    devices = ec_intermediate.issue_devices(f"gen-{i}" for i in range(3))
    assert [d.registration_id for d in devices] == ["gen-0", "gen-1", "gen-2"]
    assert ec_intermediate.issue_devices([]) == []


def check_manifest_row(row: Mapping[str, object], folder: Path, with_pfx: bool) -> None:
    """A manifest row must describe the files it points at."""
    cert_path = resolve(folder, str(row["certificate_path"]))
    key_path = resolve(folder, str(row["private_key_path"]))
    chain_path = resolve(folder, str(row["chain_path"]))
    cert = dpskit.Certificate.load(cert_path)
    assert cert.common_name == row["registration_id"]
    assert cert.serial_number == row["serial_number"]
    assert cert.thumbprint_sha1 == row["thumbprint_sha1"]
    assert cert.thumbprint_sha256 == row["thumbprint_sha256"]
    not_after = str(row["not_after"])
    assert not_after.endswith("Z")
    assert datetime.fromisoformat(not_after.removesuffix("Z") + "+00:00") == cert.not_after
    assert mode(key_path) == 0o600
    assert spki(load_key(key_path.read_bytes())) == spki(pyca(cert))
    assert dpskit.Certificate.load_all(chain_path)[0] == cert
    if with_pfx:
        pfx = resolve(folder, str(row["pkcs12_path"]))
        assert mode(pfx) == 0o600
        _, pfx_cert, _ = pkcs12.load_key_and_certificates(pfx.read_bytes(), PASSWORD.encode())
        assert pfx_cert == pyca(cert)
    else:
        assert row["pkcs12_path"] in ("", None)


def test_issue_devices_with_csv_manifest(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path
) -> None:
    ids = [f"csv-{i:04d}" for i in range(500)]
    out = tmp_path / "fleet"
    devices = ec_intermediate.issue_devices(ids, output_dir=out, manifest="csv")
    assert [d.registration_id for d in devices] == ids
    with (out / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == MANIFEST_FIELDS
        rows = list(reader)
    assert [r["registration_id"] for r in rows] == ids
    for row, device in zip(rows, devices, strict=True):
        assert row["serial_number"] == device.certificate.serial_number
    for row in rows[::50]:
        check_manifest_row(row, out, with_pfx=False)
    assert not list(out.rglob("*.pfx"))  # no pkcs12_password: no PFX files
    assert mode(out / "csv-0000.key.pem") == 0o600
    assert (out / "csv-0499.cert.pem").read_text() == devices[-1].certificate_pem


def test_issue_devices_with_json_manifest_and_pfx(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path
) -> None:
    ids = [f"json-{i:02d}" for i in range(20)]
    devices = ec_intermediate.issue_devices(
        ids, output_dir=tmp_path, manifest="json", pkcs12_password=PASSWORD
    )
    loaded = json.loads((tmp_path / "manifest.json").read_text())
    assert isinstance(loaded, list)
    assert [row["registration_id"] for row in loaded] == ids
    for row, device in zip(loaded, devices, strict=True):
        assert set(row) == set(MANIFEST_FIELDS)
        assert row["thumbprint_sha256"] == device.certificate.thumbprint_sha256
        check_manifest_row(row, tmp_path, with_pfx=True)
    assert len(list(tmp_path.glob("*.pfx"))) == 20


def test_issue_devices_output_dir_without_manifest(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path
) -> None:
    ec_intermediate.issue_devices(["plain-1", "plain-2"], output_dir=tmp_path)
    assert (tmp_path / "plain-1.cert.pem").is_file()
    assert (tmp_path / "plain-2.key.pem").is_file()
    assert not (tmp_path / "manifest.csv").exists()
    assert not (tmp_path / "manifest.json").exists()


# --- save() layouts and round-trips ----------------------------------------------------------


def test_device_save_layout(ec_device: dpskit.DeviceCertificate, tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet" / "there"
    paths = ec_device.save(folder)
    name = ec_device.registration_id
    assert paths == {
        "certificate": folder / f"{name}.cert.pem",
        "private_key": folder / f"{name}.key.pem",
        "chain": folder / f"{name}.chain.pem",
        "full_chain": folder / f"{name}.fullchain.pem",
        "pkcs12": folder / f"{name}.pfx",
    }
    assert paths["certificate"].read_text() == ec_device.certificate_pem
    assert paths["private_key"].read_text() == ec_device.private_key_pem
    assert paths["chain"].read_text() == ec_device.chain_pem
    assert paths["full_chain"].read_text() == ec_device.full_chain_pem
    assert mode(paths["private_key"]) == 0o600
    assert mode(paths["pkcs12"]) == 0o600
    _, cert, _ = pkcs12.load_key_and_certificates(paths["pkcs12"].read_bytes(), b"")
    assert cert == pyca(ec_device.certificate)


def test_device_save_named_with_password(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path
) -> None:
    paths = ec_device.save(tmp_path, name="custom", pkcs12_password=PASSWORD, legacy_pkcs12=True)
    assert paths["certificate"] == tmp_path / "custom.cert.pem"
    assert paths["pkcs12"] == tmp_path / "custom.pfx"
    key, cert, _ = pkcs12.load_key_and_certificates(paths["pkcs12"].read_bytes(), PASSWORD.encode())
    assert cert == pyca(ec_device.certificate)
    assert key is not None
    assert mode(paths["pkcs12"]) == 0o600


def test_ca_save_layout_and_reload(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    tmp_path: Path,
) -> None:
    paths = ec_intermediate.save(tmp_path)
    name = "dpskit-test-intermediate-ca"
    assert paths == {
        "certificate": tmp_path / f"{name}.cert.pem",
        "private_key": tmp_path / f"{name}.key.pem",
        "chain": tmp_path / f"{name}.chain.pem",
        "full_chain": tmp_path / f"{name}.fullchain.pem",
    }
    assert mode(paths["private_key"]) == 0o600
    assert paths["private_key"].read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert paths["full_chain"].read_text() == ec_intermediate.full_chain_pem

    # The certificate file may carry the issuers after the CA itself.
    reloaded = dpskit.CertificateAuthority.load(paths["full_chain"], paths["private_key"])
    assert reloaded.certificate == ec_intermediate.certificate
    assert ec_root.certificate in reloaded.issuers
    device = reloaded.issue_device("after-reload")
    path = dpskit.verify_chain(
        device.certificate, [ec_intermediate.certificate], [ec_root.certificate]
    )
    assert path[-1] == ec_root.certificate


def test_credential_files_name_what_a_save_writes(
    ec_device: dpskit.DeviceCertificate,
    ec_intermediate: dpskit.CertificateAuthority,
    tmp_path: Path,
) -> None:
    """The CLI finds CAs and devices by ``credential_files``: the names a save writes, from the
    one rule in the core."""
    from dpskit._native import credential_files

    saved = ec_device.save(tmp_path)
    assert credential_files(tmp_path, ec_device.registration_id) == saved
    saved = ec_intermediate.save(tmp_path, name="intermediate")
    named = credential_files(tmp_path, "intermediate")
    assert named == {**saved, "pkcs12": tmp_path / "intermediate.pfx"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("intermediate.")) == (
        sorted(p.name for p in saved.values())
    )
    # A name that would leave the folder names no files, as a save refuses it.
    for name in ("../escape", ".hidden", ""):
        with pytest.raises(dpskit.CertificateError):
            credential_files(tmp_path, name)


def test_ca_save_default_name_is_slug(tmp_path: Path) -> None:
    ca = dpskit.CertificateAuthority.create_root("Contoso Root CA", organization="Contoso")
    paths = ca.save(tmp_path)
    assert paths["certificate"] == tmp_path / "contoso-root-ca.cert.pem"
    assert "pkcs12" not in paths


def test_ca_save_encrypted_key(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path
) -> None:
    paths = ec_intermediate.save(tmp_path, name="enc", key_password=PASSWORD)
    assert paths["private_key"] == tmp_path / "enc.key.pem"
    text = paths["private_key"].read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert canonical(load_key(text, PASSWORD.encode())) == canonical(
        load_key(ec_intermediate.private_key_pem)
    )
    reloaded = dpskit.CertificateAuthority.load(
        paths["certificate"], paths["private_key"], password=PASSWORD
    )
    assert reloaded.certificate == ec_intermediate.certificate
    assert canonical(load_key(reloaded.private_key_pem)) == canonical(
        load_key(ec_intermediate.private_key_pem)
    )


def test_device_load_and_from_pem_round_trip(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path
) -> None:
    paths = ec_device.save(tmp_path)
    loaded = dpskit.DeviceCertificate.load(paths["certificate"], paths["private_key"])
    assert loaded.certificate == ec_device.certificate
    assert loaded.registration_id == ec_device.registration_id
    assert loaded.algorithm == ec_device.algorithm
    assert canonical(load_key(loaded.private_key_pem)) == canonical(
        load_key(ec_device.private_key_pem)
    )

    encrypted = ec_device.encrypted_private_key_pem(PASSWORD)
    from_pem = dpskit.DeviceCertificate.from_pem(
        ec_device.certificate_pem, encrypted, password=PASSWORD
    )
    assert from_pem.certificate == ec_device.certificate
    assert canonical(load_key(from_pem.private_key_pem)) == canonical(
        load_key(ec_device.private_key_pem)
    )
    from_bytes = dpskit.DeviceCertificate.from_pem(
        ec_device.certificate_pem.encode(), encrypted.encode(), password=PASSWORD.encode()
    )
    assert from_bytes.certificate == ec_device.certificate


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_device_from_pkcs12_round_trip(
    legacy: bool, ec_device: dpskit.DeviceCertificate, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    back = dpskit.DeviceCertificate.from_pkcs12(
        ec_device.to_pkcs12(PASSWORD, legacy=legacy), PASSWORD
    )
    assert back.certificate == ec_device.certificate
    assert back.registration_id == ec_device.registration_id
    assert back.issuers[0] == ec_intermediate.certificate
    assert canonical(load_key(back.private_key_pem)) == canonical(
        load_key(ec_device.private_key_pem)
    )


def test_ca_from_pem_round_trip(ec_intermediate: dpskit.CertificateAuthority) -> None:
    ca = dpskit.CertificateAuthority.from_pem(
        ec_intermediate.certificate_pem, ec_intermediate.private_key_pem
    )
    assert ca.certificate == ec_intermediate.certificate
    assert ca.common_name == "dpskit Test Intermediate CA"
    assert ca.issue_device("from-pem-ca").certificate.issuer == ca.certificate.subject


# --- verify_chain ----------------------------------------------------------------------------


def test_verify_chain_success(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    leaf, inter, root = ec_device.certificate, ec_intermediate.certificate, ec_root.certificate
    assert dpskit.verify_chain(leaf, [inter], [root]) == [leaf, inter, root]
    assert dpskit.verify_chain(leaf, (inter,), (root,)) == [leaf, inter, root]
    # An intermediate may itself be the anchor.
    assert dpskit.verify_chain(leaf, [], [inter]) == [leaf, inter]


def test_verify_chain_three_levels_any_order() -> None:
    root = dpskit.CertificateAuthority.create_root("VC Root")
    inter1 = root.create_intermediate("VC Inter 1", path_length=1)
    inter2 = inter1.create_intermediate("VC Inter 2")
    leaf = inter2.issue_device("vc-device").certificate
    expected = [leaf, inter2.certificate, inter1.certificate, root.certificate]
    shuffled = [inter1.certificate, inter2.certificate]
    assert dpskit.verify_chain(leaf, shuffled, [root.certificate]) == expected
    with pytest.raises(dpskit.CertificateError, match=r"(?i)path.?len"):
        inter2.create_intermediate("VC Inter 3")


def test_verify_chain_unknown_issuer(
    other_root: dpskit.CertificateAuthority,
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    with pytest.raises(dpskit.CertificateError, match=r"(?i)unknown issuer"):
        dpskit.verify_chain(
            ec_device.certificate, [ec_intermediate.certificate], [other_root.certificate]
        )
    with pytest.raises(dpskit.CertificateError, match=r"(?i)unknown issuer"):
        dpskit.verify_chain(ec_device.certificate, [], [ec_root.certificate])
    with pytest.raises(dpskit.CertificateError, match=r"(?i)unknown issuer|anchor"):
        dpskit.verify_chain(ec_device.certificate, [ec_intermediate.certificate], [])


def test_verify_chain_expired_and_not_yet_valid() -> None:
    # The CAs start well before the leaf, so only the leaf's own validity can be at fault.
    long_ago = datetime.now(timezone.utc) - timedelta(days=100)
    root = dpskit.CertificateAuthority.create_root("Old Root", not_before=long_ago)
    inter = root.create_intermediate("Old Intermediate", not_before=long_ago)
    not_before = datetime.now(timezone.utc) - timedelta(days=10)
    leaf = inter.issue_device("expired-device", days=1, not_before=not_before).certificate
    assert leaf.not_after == leaf.not_before + timedelta(days=1)
    chain, anchors = [inter.certificate], [root.certificate]
    with pytest.raises(dpskit.CertificateError, match=r"(?i)expired") as info:
        dpskit.verify_chain(leaf, chain, anchors)
    assert "expired-device" in str(info.value)  # names the certificate at fault
    during = not_before + timedelta(hours=12)
    assert dpskit.verify_chain(leaf, chain, anchors, at=during) == [leaf, *chain, *anchors]
    with pytest.raises(dpskit.CertificateError, match=r"(?i)not yet valid") as info:
        dpskit.verify_chain(leaf, chain, anchors, at=not_before - timedelta(days=1))
    assert "expired-device" in str(info.value)


def test_verify_chain_rejects_leaf_as_issuer(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    with pytest.raises(dpskit.CertificateError, match=r"(?i)not a CA"):
        dpskit.CertificateAuthority.from_pem(ec_device.certificate_pem, ec_device.private_key_pem)
    # A certificate signed by the device key, which only pyca is willing to make.
    forged, _ = sign_with_pyca(
        "forged-by-leaf",
        pyca(ec_device.certificate),
        load_key(ec_device.private_key_pem),
        ca=False,
    )
    leaf = dpskit.Certificate.from_der(forged.public_bytes(serialization.Encoding.DER))
    with pytest.raises(dpskit.CertificateError, match=r"(?i)not a CA"):
        dpskit.verify_chain(
            leaf,
            [ec_device.certificate, ec_intermediate.certificate],
            [ec_root.certificate],
        )


def test_verify_chain_path_length_exceeded(
    ec_root: dpskit.CertificateAuthority, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    # ec_intermediate has pathlen 0: a sub-CA under it (made by pyca) breaks the constraint.
    sub_ca, sub_key = sign_with_pyca(
        "Sub CA",
        pyca(ec_intermediate.certificate),
        load_key(ec_intermediate.private_key_pem),
        ca=True,
    )
    leaf, _ = sign_with_pyca("too-deep", sub_ca, sub_key, ca=False)
    der = serialization.Encoding.DER
    with pytest.raises(dpskit.CertificateError, match=r"(?i)path.?len"):
        dpskit.verify_chain(
            dpskit.Certificate.from_der(leaf.public_bytes(der)),
            [dpskit.Certificate.from_der(sub_ca.public_bytes(der)), ec_intermediate.certificate],
            [ec_root.certificate],
        )


def test_verify_chain_tampered_signature(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    der = bytearray(ec_device.certificate_der)
    # The signature BIT STRING ends the certificate; its last byte is inside ECDSA's s value, so
    # flipping it keeps the DER well-formed while breaking the signature.
    der[-1] ^= 0x01
    tampered = dpskit.Certificate.from_der(bytes(der))
    assert tampered != ec_device.certificate
    with pytest.raises(dpskit.CertificateError, match=r"(?i)signature"):
        dpskit.verify_chain(tampered, [ec_intermediate.certificate], [ec_root.certificate])


# --- secrets stay out of reprs ---------------------------------------------------------------


def test_repr_redacts_private_keys(
    ec_intermediate: dpskit.CertificateAuthority, ec_device: dpskit.DeviceCertificate
) -> None:
    for obj, key_pem in (
        (ec_device, ec_device.private_key_pem),
        (ec_intermediate, ec_intermediate.private_key_pem),
    ):
        body = "".join(key_pem.strip().splitlines()[1:-1])
        for text in (repr(obj), str(obj)):
            assert key_pem not in text
            assert "PRIVATE KEY" not in text
            assert body[:32] not in text
            assert obj.private_key_der.hex() not in text.lower()


def test_file_modes_are_not_widened_by_umask(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        paths = ec_device.save(tmp_path)
    finally:
        os.umask(old)
    assert mode(paths["private_key"]) == 0o600
    assert mode(paths["pkcs12"]) == 0o600
