"""Bad input gets a typed exception with a message that says what is wrong, never a panic.

A Rust panic would surface as ``pyo3_runtime.PanicException`` (a ``BaseException``), which
``pytest.raises(CertificateError)`` does not catch, so every test here also guards against panics.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

import dpskit
from dpskit import CertificateError

GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def make_csr(common_name: str | None, *, tamper: bool = False) -> str:
    """A CSR made by pyca, optionally without a CN or with a broken self-signature."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = (
        [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if tamper:
        der[-1] ^= 0x01  # last byte of ECDSA's s: still valid DER, no longer a valid signature
    body = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN CERTIFICATE REQUEST-----", *lines, "-----END CERTIFICATE REQUEST-----", ""]
    )


# --- certificates and keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "garbage",
        "",
        b"",
        b"\xff\xfe\x00not utf-8",
        GARBAGE_PEM,
        "-----BEGIN CERTIFICATE-----\nMIIB\n",  # armor never closed
    ],
    ids=["garbage", "empty", "empty-bytes", "not-utf8", "bad-der-in-pem", "unterminated"],
)
def test_certificate_from_bad_pem(data: str | bytes) -> None:
    with pytest.raises(CertificateError, match=r"(?i)certificate|pem"):
        dpskit.Certificate.from_pem(data)


def test_certificate_from_key_pem(ec_device: dpskit.DeviceCertificate) -> None:
    with pytest.raises(CertificateError, match=r"(?i)certificate"):
        dpskit.Certificate.from_pem(ec_device.private_key_pem)


def test_certificate_from_bad_der(ec_device: dpskit.DeviceCertificate) -> None:
    der = ec_device.certificate_der
    for data in (der[: len(der) // 2], der[:1], b"", b"\x30\x82\xff\xff", der + b"\x00"):
        with pytest.raises(CertificateError, match=r"(?i)certificate|der"):
            dpskit.Certificate.from_der(data)


def test_pem_chain_garbage() -> None:
    with pytest.raises(CertificateError, match=r"(?i)certificate|pem"):
        dpskit.Certificate.from_pem_chain("garbage")


def test_missing_files(tmp_path: Path, ec_device: dpskit.DeviceCertificate) -> None:
    missing = tmp_path / "missing.pem"
    existing = ec_device.certificate.save(tmp_path / "cert.pem")
    with pytest.raises(FileNotFoundError, match=r"missing.pem"):
        dpskit.Certificate.load(missing)
    with pytest.raises(FileNotFoundError, match=r"missing.pem"):
        dpskit.Certificate.load_all(missing)
    with pytest.raises(FileNotFoundError, match=r"missing.pem"):
        dpskit.DeviceCertificate.load(existing, missing)
    with pytest.raises(FileNotFoundError, match=r"missing.pem"):
        dpskit.CertificateAuthority.load(missing, existing)


def test_load_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pem"
    path.write_text("this is not a certificate\n")
    with pytest.raises(CertificateError, match=r"(?i)certificate|pem"):
        dpskit.Certificate.load(path)


def test_garbage_private_key(ec_device: dpskit.DeviceCertificate) -> None:
    with pytest.raises(CertificateError, match=r"(?i)key"):
        dpskit.DeviceCertificate.from_pem(ec_device.certificate_pem, "not a key")
    with pytest.raises(CertificateError, match=r"(?i)key"):
        dpskit.DeviceCertificate.from_pem(ec_device.certificate_pem, ec_device.certificate_pem)


def test_key_that_does_not_match_the_certificate(
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
) -> None:
    with pytest.raises(CertificateError, match=r"(?i)match|belong"):
        dpskit.DeviceCertificate.from_pem(ec_device.certificate_pem, ec_root.private_key_pem)
    with pytest.raises(CertificateError, match=r"(?i)match|belong"):
        dpskit.CertificateAuthority.from_pem(
            ec_intermediate.certificate_pem, ec_root.private_key_pem
        )


def traditional_encrypted(pem: str, password: bytes) -> str:
    """The legacy OpenSSL form ("Proc-Type: 4,ENCRYPTED"), as pyca writes it."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(password),
    ).decode()


@pytest.mark.parametrize("flavour", ["pkcs8", "traditional"])
def test_encrypted_key_password_errors(
    flavour: str, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    if flavour == "pkcs8":
        key = ec_intermediate.encrypted_private_key_pem("right")
    else:
        key = traditional_encrypted(ec_intermediate.private_key_pem, b"right")
        assert "Proc-Type: 4,ENCRYPTED" in key
    cert = ec_intermediate.certificate_pem
    with pytest.raises(CertificateError, match=r"(?i)password|decrypt"):
        dpskit.CertificateAuthority.from_pem(cert, key, password="wrong")
    with pytest.raises(CertificateError, match=r"(?i)password|encrypted"):
        dpskit.CertificateAuthority.from_pem(cert, key)
    ca = dpskit.CertificateAuthority.from_pem(cert, key, password="right")
    assert ca.certificate == ec_intermediate.certificate


def test_bad_pkcs12(ec_device: dpskit.DeviceCertificate) -> None:
    with pytest.raises(CertificateError, match=r"(?i)pkcs.?12|pfx"):
        dpskit.DeviceCertificate.from_pkcs12(b"garbage", "pw")
    data = ec_device.to_pkcs12("right")
    with pytest.raises(CertificateError, match=r"(?i)password|mac|integrity"):
        dpskit.DeviceCertificate.from_pkcs12(data, "wrong")


def test_non_ca_as_issuer(ec_device: dpskit.DeviceCertificate, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"(?i)not a CA"):
        dpskit.CertificateAuthority.from_pem(ec_device.certificate_pem, ec_device.private_key_pem)
    paths = ec_device.save(tmp_path)
    with pytest.raises(CertificateError, match=r"(?i)not a CA"):
        dpskit.CertificateAuthority.load(paths["certificate"], paths["private_key"])


def test_unsupported_key_type_as_ca() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ed25519 CA")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateError, match=r"(?i)algorithm|unsupported|key"):
        dpskit.CertificateAuthority.from_pem(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def test_intermediate_under_pathlen_zero(ec_intermediate: dpskit.CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match=r"(?i)path.?len"):
        ec_intermediate.create_intermediate("Too Deep CA")


# --- registration ids ------------------------------------------------------------------------

INVALID_IDS = [
    # (id, x509, a fragment the message must contain)
    ("", True, r"(?i)empty|at least 1|1\.\.128|length"),
    ("", False, r"(?i)empty|at least 1|1\.\.128|length"),
    ("a" * 129, False, "128"),
    ("a" * 129, True, "128|64"),
    ("a" * 65, True, "64"),
    ("has space", True, "(?i)character"),
    ("has/slash", True, "(?i)character"),
    ("caf\u00e9", False, "(?i)character"),
    ("trailing.", True, "(?i)end|last|trailing|final"),
    ("trailing_", False, "(?i)end|last|trailing|final"),
    ("trailing:", True, "(?i)end|last|trailing|final"),
]


@pytest.mark.parametrize(
    ("registration_id", "x509_mode", "fragment"),
    INVALID_IDS,
    ids=[f"{i!r:.20}-x509={x}" for i, x, _ in INVALID_IDS],
)
def test_invalid_registration_ids(registration_id: str, x509_mode: bool, fragment: str) -> None:
    with pytest.raises(CertificateError, match=fragment):
        dpskit.validate_registration_id(registration_id, x509=x509_mode)


@pytest.mark.parametrize("registration_id", ["has space", "a" * 65, "", "dot."])
def test_issue_device_rejects_invalid_ids(
    registration_id: str, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    with pytest.raises(CertificateError, match=r"(?i)registration[ _]id"):
        ec_intermediate.issue_device(registration_id)


def test_issue_devices_names_the_bad_id(ec_intermediate: dpskit.CertificateAuthority) -> None:
    # In a batch of thousands the message must say which id is wrong.
    with pytest.raises(CertificateError, match=r"bad id"):
        ec_intermediate.issue_devices(["fine-1", "bad id", "fine-2"])


@pytest.mark.parametrize("registration_id", ["a", "a" * 64, "A-b.c_d:e-", "0", "dev-0001"])
def test_valid_edge_ids(registration_id: str, ec_intermediate: dpskit.CertificateAuthority) -> None:
    dpskit.validate_registration_id(registration_id)
    dpskit.validate_registration_id(registration_id, x509=False)
    device = ec_intermediate.issue_device(registration_id)
    assert device.certificate.common_name == registration_id


def test_long_ids_valid_without_x509() -> None:
    dpskit.validate_registration_id("a" * 65, x509=False)
    dpskit.validate_registration_id("a" * 128, x509=False)


# --- validity, algorithms, verification codes ------------------------------------------------


@pytest.mark.parametrize("days", [0, -1, 36501, 10**6])
def test_absurd_validity(days: int, ec_root: dpskit.CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        ec_root.issue_device("validity-test", days=days)
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        dpskit.CertificateAuthority.create_root("Bad Validity Root", days=days)
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        ec_root.create_intermediate("Bad Validity Intermediate", days=days)
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        ec_root.issue_devices(["validity-batch"], days=days)
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        ec_root.create_verification_certificate("ABCDEF", days=days)
    with pytest.raises(CertificateError, match=r"(?i)days|validity"):
        ec_root.sign_csr(make_csr("csr-validity"), days=days)


def test_validity_bounds_are_inclusive(ec_root: dpskit.CertificateAuthority) -> None:
    short = ec_root.issue_device("one-day", days=1).certificate
    assert short.not_after - short.not_before == timedelta(days=1)
    long = dpskit.CertificateAuthority.create_root("Century Root", days=36500).certificate
    assert long.not_after - long.not_before == timedelta(days=36500)


@pytest.mark.parametrize("algorithm", ["dsa-1024", "", "EC P-256", "rsa-1024", "ed25519"])
def test_unknown_algorithm(algorithm: str, ec_root: dpskit.CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match=r"(?i)algorithm") as info:
        dpskit.CertificateAuthority.create_root("Bad Algorithm Root", algorithm=algorithm)
    assert algorithm in str(info.value)  # the message names the offending value
    with pytest.raises(CertificateError, match=r"(?i)algorithm"):
        ec_root.issue_device("bad-algorithm", algorithm=algorithm)
    with pytest.raises(CertificateError, match=r"(?i)algorithm"):
        ec_root.issue_devices(["bad-algorithm"], algorithm=algorithm)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [("", "(?i)empty|code"), ("A" * 65, "64")],
    ids=["empty", "65-chars"],
)
def test_bad_verification_code(
    code: str, fragment: str, ec_root: dpskit.CertificateAuthority
) -> None:
    with pytest.raises(CertificateError, match=fragment):
        ec_root.create_verification_certificate(code)


def test_longest_verification_code(ec_root: dpskit.CertificateAuthority) -> None:
    code = "F" * 64
    assert ec_root.create_verification_certificate(code).common_name == code


# --- CSRs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "csr",
    ["garbage", "", GARBAGE_PEM.replace("CERTIFICATE", "CERTIFICATE REQUEST")],
    ids=["garbage", "empty", "bad-der"],
)
def test_csr_garbage(csr: str, ec_intermediate: dpskit.CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match=r"(?i)csr|request|pem"):
        ec_intermediate.sign_csr(csr)


def test_certificate_is_not_a_csr(
    ec_intermediate: dpskit.CertificateAuthority, ec_device: dpskit.DeviceCertificate
) -> None:
    with pytest.raises(CertificateError, match=r"(?i)csr|request"):
        ec_intermediate.sign_csr(ec_device.certificate_pem)


# (No 65-character CN here: X.509 caps CN at 64, so no CSR tool will even write one.)
@pytest.mark.parametrize("common_name", ["has space", "slash/id", "dot.", "caf\u00e9"])
def test_csr_with_bad_common_name(
    common_name: str, ec_intermediate: dpskit.CertificateAuthority
) -> None:
    csr = make_csr(common_name)
    with pytest.raises(CertificateError, match=r"(?i)registration[ _]id"):
        ec_intermediate.sign_csr(csr)
    # The CN is what gets validated: an explicit, valid registration id replaces it.
    cert = ec_intermediate.sign_csr(csr, registration_id="fixed-id")
    assert cert.common_name == "fixed-id"


def test_csr_without_common_name(ec_intermediate: dpskit.CertificateAuthority) -> None:
    csr = make_csr(None)
    with pytest.raises(CertificateError, match=r"(?i)common name|CN|registration[ _]id"):
        ec_intermediate.sign_csr(csr)
    assert ec_intermediate.sign_csr(csr, registration_id="given-id").common_name == "given-id"


def test_csr_with_bad_registration_id_override(
    ec_intermediate: dpskit.CertificateAuthority,
) -> None:
    with pytest.raises(CertificateError, match=r"(?i)registration[ _]id"):
        ec_intermediate.sign_csr(make_csr("good-cn"), registration_id="bad id")


def test_csr_with_broken_signature(ec_intermediate: dpskit.CertificateAuthority) -> None:
    # A CSR's self-signature proves possession of the key: a broken one must be refused.
    with pytest.raises(CertificateError, match=r"(?i)signature"):
        ec_intermediate.sign_csr(make_csr("tampered-csr", tamper=True))
