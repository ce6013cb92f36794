"""OpenSSL is the judge: everything dpskit issues must satisfy the ``openssl`` command line tool.

We do not trust our own parser to grade our own writer: every chain goes through ``openssl verify``,
every profile through ``openssl x509 -text``, every PFX through ``openssl pkcs12 -info``, and CAs,
keys and CSRs made by OpenSSL must be usable by dpskit.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import dpskit

pytestmark = pytest.mark.openssl

OpenSSLOutput = Callable[..., str]
RunOpenSSL = Callable[..., subprocess.CompletedProcess[str]]

PFX_PASSWORD = "pfx-Pa55word!"
VERIFICATION_CODE = "0C5F8A0B3E8F4C7D9A6B1E2F3A4B5C6D7E8F9A0B1C2D3E4F"
KEY_BITS = {"ec-p256": 256, "ec-p384": 384, "rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}
CA_KEY_USAGE = {"Digital Signature", "Certificate Sign", "CRL Sign"}
PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
PEM_KEY_RE = re.compile(r"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.DOTALL)


# --- parsing what openssl prints ------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """One X509v3 extension as ``openssl x509 -text`` prints it."""

    critical: bool
    values: list[str]


def parse_extensions(text: str) -> dict[str, Extension]:
    """Map extension names ("X509v3 Basic Constraints") to their criticality and value lines."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "X509v3 extensions:")
    except StopIteration:
        return {}
    header = re.compile(r"^ {12}(?P<name>\S.*?):(?P<critical> critical)?\s*$")
    extensions: dict[str, Extension] = {}
    current: Extension | None = None
    for line in lines[start + 1 :]:
        if line.startswith(" " * 16) and current is not None:
            current.values.append(line.strip())
            continue
        match = header.match(line)
        if match is None:
            break  # back at a lower indentation: the extensions block is over
        current = Extension(critical=match["critical"] is not None, values=[])
        extensions[match["name"]] = current
    return extensions


def parse_serials(text: str) -> list[int]:
    """Every ``Serial Number:`` in the text, in order (both the short and the hex-dump forms)."""
    serials: list[int] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("Serial Number:"):
            continue
        rest = stripped.removeprefix("Serial Number:").strip()
        if rest:  # short form: "Serial Number: 4660 (0x1234)"
            serials.append(int(rest.split()[0]))
        else:  # long form: the hex bytes are on the next line
            serials.append(int(lines[i + 1].strip().replace(":", ""), 16))
    return serials


def parse_validity(text: str) -> tuple[datetime, datetime]:
    """Parse the output of ``openssl x509 -noout -startdate -enddate``."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def parse(value: str) -> datetime:
        return datetime.strptime(value.strip(), "%b %d %H:%M:%S %Y GMT").replace(
            tzinfo=timezone.utc
        )

    return parse(values["notBefore"]), parse(values["notAfter"])


def hex_id(value: str) -> str:
    """Normalise a key identifier ("keyid:AB:CD" or "ABCD") to bare upper-case hex."""
    return value.removeprefix("keyid:").replace(":", "").strip().upper()


def public_key_der_of_cert_pem(pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_der_of_key_pem(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- a root + intermediate + device for each algorithm ----------------------------------------


@dataclass(frozen=True)
class Chain:
    """A three-tier PKI whose tiers all use one algorithm, with its PEM files on disk."""

    algorithm: str
    root: dpskit.CertificateAuthority
    intermediate: dpskit.CertificateAuthority
    device: dpskit.DeviceCertificate
    folder: Path

    @property
    def root_pem(self) -> Path:
        return self.folder / "root.pem"

    @property
    def intermediate_pem(self) -> Path:
        return self.folder / "intermediate.pem"

    @property
    def device_pem(self) -> Path:
        return self.folder / "device.pem"

    @property
    def device_key(self) -> Path:
        return self.folder / "device.key.pem"


# Module scope: pytest orders the tests so that each algorithm's chain (rsa-4096 above all,
# which takes seconds) is generated once for every test that uses it.
@pytest.fixture(scope="module", params=list(dpskit.ALGORITHMS))
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    algorithm: str = request.param
    folder = tmp_path_factory.mktemp(f"chain-{algorithm}")
    root = dpskit.CertificateAuthority.create_root(
        f"dpskit Judge Root {algorithm}", algorithm=algorithm, organization="dpskit"
    )
    intermediate = root.create_intermediate(
        f"dpskit Judge Intermediate {algorithm}", algorithm=algorithm
    )
    device = intermediate.issue_device(f"judge-{algorithm}", algorithm=algorithm)
    chain = Chain(algorithm, root, intermediate, device, folder)
    root.certificate.save(chain.root_pem)
    intermediate.certificate.save(chain.intermediate_pem)
    device.certificate.save(chain.device_pem)
    write(chain.device_key, device.private_key_pem)
    return chain


def test_algorithms_are_the_documented_five() -> None:
    assert set(dpskit.ALGORITHMS) == set(KEY_BITS)


def test_openssl_verifies_device_chain(chain: Chain, openssl_output: OpenSSLOutput) -> None:
    out = openssl_output(
        "verify", "-CAfile", chain.root_pem, "-untrusted", chain.intermediate_pem, chain.device_pem
    )
    assert out.strip() == f"{chain.device_pem}: OK"


def test_openssl_verifies_strict_for_client_auth(
    chain: Chain, openssl_output: OpenSSLOutput
) -> None:
    # -x509_strict adds the RFC 5280 checks (SKI/AKI present, critical basicConstraints on CAs,
    # ...), -purpose sslclient checks keyUsage/EKU fit a TLS client like a DPS device.
    out = openssl_output(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        chain.root_pem,
        "-untrusted",
        chain.intermediate_pem,
        chain.device_pem,
    )
    assert out.strip() == f"{chain.device_pem}: OK"


def test_openssl_accepts_chain_pem_as_untrusted(
    chain: Chain, openssl_output: OpenSSLOutput
) -> None:
    # chain.pem (leaf + intermediates) is what devices present in TLS; it must complete the path.
    chain_file = write(chain.folder / "device.chain.pem", chain.device.chain_pem)
    out = openssl_output(
        "verify", "-CAfile", chain.root_pem, "-untrusted", chain_file, chain.device_pem
    )
    assert out.strip() == f"{chain.device_pem}: OK"


def test_openssl_reads_private_key_and_it_matches(
    chain: Chain, openssl_output: OpenSSLOutput
) -> None:
    from_key = openssl_output("pkey", "-in", chain.device_key, "-pubout")
    from_cert = openssl_output("x509", "-in", chain.device_pem, "-pubkey", "-noout")
    assert from_key == from_cert
    assert chain.device.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")


def test_openssl_decrypts_encrypted_private_key(
    chain: Chain, openssl_output: OpenSSLOutput, run_openssl: RunOpenSSL
) -> None:
    encrypted = write(
        chain.folder / "device.key.enc.pem", chain.device.encrypted_private_key_pem("k3y-pass")
    )
    assert encrypted.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    from_key = openssl_output("pkey", "-in", encrypted, "-passin", "pass:k3y-pass", "-pubout")
    from_cert = openssl_output("x509", "-in", chain.device_pem, "-pubkey", "-noout")
    assert from_key == from_cert
    wrong = run_openssl("pkey", "-in", encrypted, "-passin", "pass:wrong", "-pubout")
    assert wrong.returncode != 0


def test_ca_profiles(chain: Chain, openssl_output: OpenSSLOutput) -> None:
    root_text = openssl_output("x509", "-in", chain.root_pem, "-text", "-noout")
    inter_text = openssl_output("x509", "-in", chain.intermediate_pem, "-text", "-noout")
    root_ext = parse_extensions(root_text)
    inter_ext = parse_extensions(inter_text)

    for ext, basic_constraints in ((root_ext, "CA:TRUE"), (inter_ext, "CA:TRUE, pathlen:0")):
        bc = ext["X509v3 Basic Constraints"]
        assert bc.critical
        assert bc.values == [basic_constraints]
        ku = ext["X509v3 Key Usage"]
        assert ku.critical
        assert set(ku.values[0].split(", ")) == CA_KEY_USAGE
        assert re.fullmatch(
            r"[0-9A-F]{2}(:[0-9A-F]{2})+", ext["X509v3 Subject Key Identifier"].values[0]
        )

    # A self-signed root carries no AKI; the intermediate's AKI names the root's SKI.
    assert "X509v3 Authority Key Identifier" not in root_ext
    root_ski = hex_id(root_ext["X509v3 Subject Key Identifier"].values[0])
    assert hex_id(inter_ext["X509v3 Authority Key Identifier"].values[0]) == root_ski
    assert f"Public-Key: ({KEY_BITS[chain.algorithm]} bit)" in root_text
    assert f"Public-Key: ({KEY_BITS[chain.algorithm]} bit)" in inter_text
    assert "Subject: CN = dpskit Judge Root" in root_text
    assert "O = dpskit" in root_text


def test_device_profile(chain: Chain, openssl_output: OpenSSLOutput) -> None:
    text = openssl_output("x509", "-in", chain.device_pem, "-text", "-noout")
    inter_text = openssl_output("x509", "-in", chain.intermediate_pem, "-text", "-noout")
    ext = parse_extensions(text)

    bc = ext["X509v3 Basic Constraints"]
    assert bc.critical
    assert bc.values == ["CA:FALSE"]
    ku = ext["X509v3 Key Usage"]
    assert ku.critical
    assert ku.values == ["Digital Signature"]
    assert ext["X509v3 Extended Key Usage"].values == ["TLS Web Client Authentication"]
    assert "X509v3 Subject Key Identifier" in ext
    inter_ski = hex_id(parse_extensions(inter_text)["X509v3 Subject Key Identifier"].values[0])
    assert hex_id(ext["X509v3 Authority Key Identifier"].values[0]) == inter_ski
    assert f"Subject: CN = judge-{chain.algorithm}" in text
    assert f"Public-Key: ({KEY_BITS[chain.algorithm]} bit)" in text


def test_serials_match_and_fit_128_bits(chain: Chain, openssl_output: OpenSSLOutput) -> None:
    certs = (chain.root.certificate, chain.intermediate.certificate, chain.device.certificate)
    paths = (chain.root_pem, chain.intermediate_pem, chain.device_pem)
    for cert, path in zip(certs, paths, strict=True):
        (serial,) = parse_serials(openssl_output("x509", "-in", path, "-text", "-noout"))
        assert serial == int(cert.serial_number, 16)
        assert 0 < serial < 2**128


def test_validity_defaults(chain: Chain, openssl_output: OpenSSLOutput) -> None:
    tiers = (
        (chain.root.certificate, chain.root_pem, 3650),
        (chain.intermediate.certificate, chain.intermediate_pem, 1825),
        (chain.device.certificate, chain.device_pem, 365),
    )
    for cert, path, days in tiers:
        not_before, not_after = parse_validity(
            openssl_output("x509", "-in", path, "-noout", "-startdate", "-enddate")
        )
        assert not_after - not_before == timedelta(days=days)
        assert (not_before, not_after) == (cert.not_before, cert.not_after)


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_pkcs12_opens_with_password(
    chain: Chain, legacy: bool, openssl_output: OpenSSLOutput, run_openssl: RunOpenSSL
) -> None:
    flavour = "legacy" if legacy else "modern"
    pfx = chain.folder / f"device-{flavour}.pfx"
    pfx.write_bytes(chain.device.to_pkcs12(PFX_PASSWORD, legacy=legacy))

    out = openssl_output("pkcs12", "-info", "-nodes", "-in", pfx, "-passin", f"pass:{PFX_PASSWORD}")
    if legacy:
        assert "pbeWithSHA1And3-KeyTripleDES-CBC" in out
        assert "MAC: sha1" in out
        assert "PBES2" not in out
    else:
        assert "PBES2" in out
        assert "AES-256-CBC" in out
        assert "TripleDES" not in out

    # The bags hold the leaf and its chain (the intermediates), and the leaf's key.
    bag_certs = {x509.load_pem_x509_certificate(m.encode()) for m in PEM_CERT_RE.findall(out)}
    expected = set(x509.load_pem_x509_certificates(chain.device.chain_pem.encode()))
    assert expected <= bag_certs
    assert f"subject=CN = judge-{chain.algorithm}" in out
    (key_pem,) = PEM_KEY_RE.findall(out)
    assert public_key_der_of_key_pem(key_pem) == public_key_der_of_cert_pem(
        chain.device.certificate_pem
    )

    wrong = run_openssl("pkcs12", "-info", "-nodes", "-in", pfx, "-passin", "pass:not-it")
    assert wrong.returncode != 0


def test_pkcs12_default_empty_password(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path, openssl_output: OpenSSLOutput
) -> None:
    pfx = tmp_path / "device.pfx"
    pfx.write_bytes(ec_device.to_pkcs12())
    out = openssl_output("pkcs12", "-info", "-nodes", "-in", pfx, "-passin", "pass:")
    assert "subject=CN = test-device-01" in out
    assert "-----BEGIN PRIVATE KEY-----" in out


def test_saved_pfx_opens_with_openssl(
    ec_device: dpskit.DeviceCertificate, tmp_path: Path, openssl_output: OpenSSLOutput
) -> None:
    paths = ec_device.save(tmp_path, pkcs12_password=PFX_PASSWORD, legacy_pkcs12=True)
    out = openssl_output(
        "pkcs12", "-info", "-nodes", "-in", paths["pkcs12"], "-passin", f"pass:{PFX_PASSWORD}"
    )
    assert "pbeWithSHA1And3-KeyTripleDES-CBC" in out
    assert "subject=CN = test-device-01" in out
    verify = openssl_output("verify", "-CAfile", paths["full_chain"], paths["certificate"])
    assert verify.strip().endswith(": OK")


def test_judge_rejects_a_chain_without_its_intermediate(
    ec_root: dpskit.CertificateAuthority,
    ec_device: dpskit.DeviceCertificate,
    tmp_path: Path,
    run_openssl: RunOpenSSL,
) -> None:
    # Guards against a vacuous judge: leaving out the intermediate must make openssl refuse.
    root = ec_root.certificate.save(tmp_path / "root.pem")
    device = ec_device.certificate.save(tmp_path / "device.pem")
    proc = run_openssl("verify", "-CAfile", root, device)
    assert proc.returncode != 0
    assert "unable to get local issuer certificate" in proc.stdout + proc.stderr


def test_three_level_chain(tmp_path: Path, openssl_output: OpenSSLOutput) -> None:
    root = dpskit.CertificateAuthority.create_root("Three Level Root")
    inter1 = root.create_intermediate("Three Level Inter 1", path_length=1)
    inter2 = inter1.create_intermediate("Three Level Inter 2")
    device = inter2.issue_device("three-level-device")

    root_pem = root.certificate.save(tmp_path / "root.pem")
    # inter2.chain_pem = inter2 + inter1: what a CA hands out alongside its certificates.
    untrusted = write(tmp_path / "inter-chain.pem", inter2.chain_pem)
    device_pem = device.certificate.save(tmp_path / "device.pem")
    out = openssl_output(
        "verify", "-x509_strict", "-CAfile", root_pem, "-untrusted", untrusted, device_pem
    )
    assert out.strip() == f"{device_pem}: OK"

    leaf_chain = write(tmp_path / "device.chain.pem", device.chain_pem)
    out = openssl_output("verify", "-CAfile", root_pem, "-untrusted", leaf_chain, device_pem)
    assert out.strip() == f"{device_pem}: OK"

    texts = {
        name: openssl_output("x509", "-text", "-noout", stdin=ca.certificate_pem)
        for name, ca in (("root", root), ("inter1", inter1), ("inter2", inter2))
    }
    expected = {
        "root": ["CA:TRUE"],
        "inter1": ["CA:TRUE, pathlen:1"],
        "inter2": ["CA:TRUE, pathlen:0"],
    }
    for name, text in texts.items():
        bc = parse_extensions(text)["X509v3 Basic Constraints"]
        assert bc.critical
        assert bc.values == expected[name], name


def test_root_path_length_is_printed(openssl_output: OpenSSLOutput) -> None:
    root = dpskit.CertificateAuthority.create_root("Pathlen Root", path_length=2)
    text = openssl_output("x509", "-text", "-noout", stdin=root.certificate_pem)
    assert parse_extensions(text)["X509v3 Basic Constraints"].values == ["CA:TRUE, pathlen:2"]


def test_mixed_algorithm_chain(tmp_path: Path, openssl_output: OpenSSLOutput) -> None:
    root = dpskit.CertificateAuthority.create_root("Mixed Root", algorithm="ec-p384")
    inter = root.create_intermediate("Mixed Intermediate", algorithm="rsa-2048")
    device = inter.issue_device("mixed-device", algorithm="ec-p256")
    root_pem = root.certificate.save(tmp_path / "root.pem")
    inter_pem = inter.certificate.save(tmp_path / "inter.pem")
    device_pem = device.certificate.save(tmp_path / "device.pem")
    out = openssl_output("verify", "-CAfile", root_pem, "-untrusted", inter_pem, device_pem)
    assert out.strip() == f"{device_pem}: OK"


def test_serials_carry_at_least_120_random_bits(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path, openssl_output: OpenSSLOutput
) -> None:
    # 128-bit random serials: a single one may start with zero bits by chance, so judge a batch.
    devices = ec_intermediate.issue_devices([f"serial-{i:03d}" for i in range(256)])
    bundle = write(tmp_path / "bundle.pem", "".join(d.certificate_pem for d in devices))
    p7b = tmp_path / "bundle.p7b"
    openssl_output("crl2pkcs7", "-nocrl", "-certfile", bundle, "-out", p7b)
    serials = parse_serials(openssl_output("pkcs7", "-in", p7b, "-print_certs", "-text", "-noout"))
    assert serials == [int(d.certificate.serial_number, 16) for d in devices]
    assert len(set(serials)) == len(serials)
    bits = [s.bit_length() for s in serials]
    assert max(bits) <= 128
    assert min(bits) >= 100  # P(< 100 of 127 random bits) ~ 2**-27 per serial
    assert sum(b >= 120 for b in bits) >= 0.95 * len(bits)


def test_explicit_validity(
    ec_intermediate: dpskit.CertificateAuthority, tmp_path: Path, openssl_output: OpenSSLOutput
) -> None:
    not_before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    device = ec_intermediate.issue_device("validity-device", days=10, not_before=not_before)
    path = device.certificate.save(tmp_path / "device.pem")
    start, end = parse_validity(
        openssl_output("x509", "-in", path, "-noout", "-startdate", "-enddate")
    )
    assert start == not_before
    assert end == not_before + timedelta(days=10)


# --- CAs, keys and CSRs made by OpenSSL --------------------------------------------------------


def make_openssl_key(kind: str, folder: Path, openssl_output: OpenSSLOutput) -> Path:
    """Create a CA key the way the OpenSSL tutorials do; ``kind`` names the PEM flavour."""
    key = folder / "ca.key"
    if kind == "rsa-pkcs8-encrypted":  # OpenSSL 3's default output of genrsa -aes256
        openssl_output("genrsa", "-aes256", "-passout", "pass:1234", "-out", key, "2048")
    elif kind == "rsa-traditional-encrypted":
        openssl_output(
            "genrsa", "-aes256", "-traditional", "-passout", "pass:1234", "-out", key, "2048"
        )
    elif kind == "rsa-pkcs1":
        openssl_output("genrsa", "-traditional", "-out", key, "2048")
    elif kind == "ec-sec1-with-params":  # ecparam -genkey writes an EC PARAMETERS block first
        openssl_output("ecparam", "-genkey", "-name", "prime256v1", "-out", key)
    elif kind == "ec-sec1":
        openssl_output("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", key)
    elif kind == "ec-sec1-encrypted":
        plain = folder / "plain.key"
        openssl_output("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", plain)
        openssl_output("ec", "-in", plain, "-aes256", "-passout", "pass:1234", "-out", key)
    else:
        raise AssertionError(kind)
    return key


OPENSSL_KEYS = {
    # kind: (password, a line the PEM must contain, dpskit algorithm)
    "rsa-pkcs8-encrypted": ("1234", "-----BEGIN ENCRYPTED PRIVATE KEY-----", "rsa-2048"),
    "rsa-traditional-encrypted": ("1234", "Proc-Type: 4,ENCRYPTED", "rsa-2048"),
    "rsa-pkcs1": (None, "-----BEGIN RSA PRIVATE KEY-----", "rsa-2048"),
    "ec-sec1-with-params": (None, "-----BEGIN EC PRIVATE KEY-----", "ec-p256"),
    "ec-sec1": (None, "-----BEGIN EC PRIVATE KEY-----", "ec-p256"),
    "ec-sec1-encrypted": ("1234", "Proc-Type: 4,ENCRYPTED", "ec-p256"),
}


@pytest.mark.parametrize("kind", list(OPENSSL_KEYS))
def test_openssl_made_ca_issues_verifiable_devices(
    kind: str, tmp_path: Path, openssl_output: OpenSSLOutput
) -> None:
    password, marker, algorithm = OPENSSL_KEYS[kind]
    key = make_openssl_key(kind, tmp_path, openssl_output)
    assert marker in key.read_text()  # the precondition: OpenSSL wrote the flavour we meant
    passin = ["-passin", f"pass:{password}"] if password else []
    cert = tmp_path / "ca.pem"
    openssl_output(
        "req", "-x509", "-new", "-key", key, *passin,
        "-subj", "/CN=OpenSSL Made Root CA/O=Contoso", "-days", "30", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", cert,
    )  # fmt: skip

    ca = dpskit.CertificateAuthority.load(cert, key, password=password)
    assert ca.common_name == "OpenSSL Made Root CA"
    assert ca.algorithm == algorithm
    assert ca.certificate.is_ca

    device = ca.issue_device(f"from-openssl-{kind}")
    device_pem = device.certificate.save(tmp_path / "device.pem")
    out = openssl_output("verify", "-CAfile", cert, device_pem)
    assert out.strip() == f"{device_pem}: OK"

    # A dpskit intermediate under the OpenSSL root, and a device under that, verify too.
    inter = ca.create_intermediate("dpskit Intermediate under OpenSSL")
    inter_pem = inter.certificate.save(tmp_path / "inter.pem")
    device2 = inter.issue_device(f"from-openssl-inter-{kind}")
    device2_pem = device2.certificate.save(tmp_path / "device2.pem")
    out = openssl_output("verify", "-CAfile", cert, "-untrusted", inter_pem, device2_pem)
    assert out.strip() == f"{device2_pem}: OK"


@pytest.mark.parametrize(
    "newkey", [["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], ["-newkey", "rsa:2048"]],
    ids=["ec", "rsa"],
)  # fmt: skip
def test_sign_csr_from_openssl(
    newkey: list[str],
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    tmp_path: Path,
    openssl_output: OpenSSLOutput,
) -> None:
    key = tmp_path / "device.key"
    csr = tmp_path / "device.csr"
    openssl_output(
        "req", "-new", *newkey, "-nodes", "-keyout", key, "-subj", "/CN=csr-device-01", "-out", csr
    )
    cert = ec_intermediate.sign_csr(csr.read_text())
    assert cert.common_name == "csr-device-01"
    assert not cert.is_ca
    assert cert.extended_key_usage == ["clientAuth"]

    root_pem = ec_root.certificate.save(tmp_path / "root.pem")
    inter_pem = ec_intermediate.certificate.save(tmp_path / "inter.pem")
    cert_pem = cert.save(tmp_path / "device.pem")
    out = openssl_output(
        "verify", "-x509_strict", "-purpose", "sslclient",
        "-CAfile", root_pem, "-untrusted", inter_pem, cert_pem,
    )  # fmt: skip
    assert out.strip() == f"{cert_pem}: OK"
    # The certificate carries the CSR's public key, not one of our own.
    assert openssl_output("x509", "-in", cert_pem, "-pubkey", "-noout") == openssl_output(
        "pkey", "-in", key, "-pubout"
    )

    renamed = ec_intermediate.sign_csr(csr.read_bytes(), registration_id="override-01")
    assert renamed.common_name == "override-01"
    text = openssl_output("x509", "-text", "-noout", stdin=renamed.pem)
    assert "Subject: CN = override-01" in text
    assert parse_extensions(text)["X509v3 Basic Constraints"].values == ["CA:FALSE"]


@pytest.mark.parametrize("tier", ["root", "intermediate"])
def test_verification_certificate(
    tier: str,
    ec_root: dpskit.CertificateAuthority,
    ec_intermediate: dpskit.CertificateAuthority,
    tmp_path: Path,
    openssl_output: OpenSSLOutput,
) -> None:
    ca = ec_root if tier == "root" else ec_intermediate
    pop = ca.create_verification_certificate(VERIFICATION_CODE)
    pop_pem = pop.save(tmp_path / "verification.pem")
    root_pem = ec_root.certificate.save(tmp_path / "root.pem")
    ca_pem = ca.certificate.save(tmp_path / "ca.pem")

    subject = openssl_output("x509", "-in", pop_pem, "-noout", "-subject").strip()
    assert subject == f"subject=CN = {VERIFICATION_CODE}"
    assert pop.common_name == VERIFICATION_CODE
    assert pop.issuer == ca.certificate.subject

    # DPS checks the PoP certificate against the CA it is verifying: that CA alone is the anchor.
    out = openssl_output("verify", "-partial_chain", "-CAfile", ca_pem, pop_pem)
    assert out.strip() == f"{pop_pem}: OK"
    untrusted = ["-untrusted", ca_pem] if tier == "intermediate" else []
    out = openssl_output("verify", "-CAfile", root_pem, *untrusted, pop_pem)
    assert out.strip() == f"{pop_pem}: OK"

    text = openssl_output("x509", "-in", pop_pem, "-text", "-noout")
    assert parse_extensions(text)["X509v3 Basic Constraints"].values == ["CA:FALSE"]
    start, end = parse_validity(
        openssl_output("x509", "-in", pop_pem, "-noout", "-startdate", "-enddate")
    )
    assert end - start == timedelta(days=30)
