"""Benchmark: issue the same device certificates with dpskit, pyca/cryptography and the OpenSSL CLI.

Run it as a script (it is not a pytest test)::

    python tests/benchmarks/bench_certificates.py [--count N] [--pyca-count N] [--openssl-count N]
        [--rsa-count N] [--pyca-rsa-count N] [--openssl-rsa-count N] [--no-rsa4096]

Every implementation issues the same profile (CA:FALSE, keyUsage digitalSignature, EKU clientAuth,
SKI, AKI, 365 days) from the same issuing CA, and produces the PEM of the certificate and of the
PKCS#8 private key: that is what a device needs, and dpskit computes both during issuance.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend as pyca_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import dpskit
import dpskit._native

TABLE_HEADER = (
    f"{'scenario':<30}{'implementation':<38}{'certs':>7}{'seconds':>10}{'certs/s':>12}"
    f"{'dpskit/this':>13}"
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

OPENSSL_DEVICE_EXTENSIONS = """\
[device]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Result:
    """One timed run: ``count`` certificates in ``seconds``."""

    scenario: str
    implementation: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Issuer:
    """The issuing CA in the three forms the contenders need."""

    ca: dpskit.CertificateAuthority
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path


def make_issuer(ca: dpskit.CertificateAuthority, folder: Path) -> Issuer:
    """Export a dpskit CA so that pyca and the OpenSSL CLI sign with the very same key."""
    key = serialization.load_pem_private_key(ca.private_key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    cert_path = folder / f"{ca.algorithm}-ca.pem"
    key_path = folder / f"{ca.algorithm}-ca.key"
    cert_path.write_text(ca.certificate_pem)
    key_path.write_text(ca.private_key_pem)
    key_path.chmod(0o600)
    return Issuer(ca, x509.load_pem_x509_certificate(ca.certificate_pem.encode()), key, cert_path,
                  key_path)  # fmt: skip


def timed(function: Callable[[], int]) -> tuple[int, float]:
    """Run ``function`` (which returns how many certificates it made) and time it."""
    start = time.perf_counter()
    count = function()
    return count, time.perf_counter() - start


# --- the contenders --------------------------------------------------------------------------


def dpskit_issue(issuer: Issuer, algorithm: str, count: int) -> int:
    """dpskit: one parallel batch; every PEM is touched so that nothing is left lazy."""
    ids = [f"bench-{algorithm}-{i:06d}" for i in range(count)]
    devices = issuer.ca.issue_devices(ids, algorithm=algorithm)
    size = 0
    for device in devices:
        size += len(device.certificate_pem) + len(device.private_key_pem)
    assert size > 0 or count == 0
    return len(devices)


def pyca_issue(issuer: Issuer, algorithm: str, count: int) -> int:
    """pyca/cryptography: a plain loop of keygen, CertificateBuilder, sign and PEM encoding."""
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    basic = x509.BasicConstraints(ca=False, path_length=None)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    size = 0
    for i in range(count):
        key: PrivateKey
        if algorithm == "ec-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-pyca-{i:06d}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=365))
            .add_extension(basic, critical=True)
            .add_extension(usage, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(aki, critical=False)
            .sign(issuer.key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        size += len(cert_pem) + len(key_pem)
    assert size > 0 or count == 0
    return count


def openssl_issue(openssl: str, issuer: Issuer, algorithm: str, count: int, folder: Path) -> int:
    """The OpenSSL CLI the way the tutorials do it: genpkey, req -new, x509 -req per device."""
    extfile = folder / "device.ext"
    extfile.write_text(OPENSSL_DEVICE_EXTENSIONS)
    if algorithm == "ec-p256":
        keygen = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        keygen = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]

    def run(*args: str | Path) -> None:
        subprocess.run(
            [openssl, *(str(a) for a in args)], check=True, capture_output=True, timeout=120
        )

    for i in range(count):
        name = f"bench-openssl-{algorithm}-{i:06d}"
        key, csr, cert = (folder / f"{name}{ext}" for ext in (".key.pem", ".csr", ".cert.pem"))
        run("genpkey", *keygen, "-out", key)
        run("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
        run(
            "x509", "-req", "-in", csr, "-CA", issuer.cert_path, "-CAkey", issuer.key_path,
            "-days", "365", "-sha256", "-extfile", extfile, "-extensions", "device",
            "-out", cert,
        )  # fmt: skip
    return count


def pyca_rsa4096_root() -> int:
    """pyca: an RSA-4096 self-signed root CA (keygen dominates)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench pyca RSA-4096 Root")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert.public_bytes(serialization.Encoding.PEM)
    key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return 1


def dpskit_rsa4096_root() -> int:
    """dpskit: an RSA-4096 root CA, PEM included."""
    ca = dpskit.CertificateAuthority.create_root("Bench dpskit RSA-4096 Root", algorithm="rsa-4096")
    assert ca.certificate_pem
    assert ca.private_key_pem
    return 1


# --- reporting -------------------------------------------------------------------------------


def describe_environment(openssl: str | None) -> list[str]:
    native = Path(dpskit._native.__file__ or "")
    size = native.stat().st_size / 1e6 if native.is_file() else 0.0
    cli = "not found"
    if openssl is not None:
        cli = subprocess.run(
            [openssl, "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return [
        f"  python        {platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.machine()})",
        f"  dpskit        native module {native.name} ({size:.1f} MB)",
        f"  cryptography  {cryptography.__version__} ({pyca_backend.openssl_version_text()})",
        f"  openssl CLI   {cli}",
        f"  os.cpu_count  {os.cpu_count()}",
    ]


def format_row(result: Result, reference: Result | None) -> str:
    ratio = "-" if reference is None else f"{reference.rate / result.rate:.1f}x"
    return (
        f"{result.scenario:<30}{result.implementation:<38}{result.count:>7}"
        f"{result.seconds:>10.3f}{result.rate:>12.1f}{ratio:>13}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20000, help="dpskit EC P-256 devices")
    parser.add_argument("--pyca-count", type=int, default=3000, help="pyca EC P-256 devices")
    parser.add_argument("--openssl-count", type=int, default=30, help="OpenSSL CLI EC devices")
    parser.add_argument("--rsa-count", type=int, default=40, help="dpskit RSA-2048 devices")
    parser.add_argument(
        "--pyca-rsa-count",
        type=int,
        default=None,
        help="pyca RSA-2048 devices (default: --rsa-count)",
    )
    parser.add_argument(
        "--openssl-rsa-count",
        type=int,
        default=None,
        help="OpenSSL CLI RSA-2048 devices (default: min(5, --openssl-count))",
    )
    parser.add_argument(
        "--no-rsa4096", action="store_true", help="skip timing the RSA-4096 root creation"
    )
    args = parser.parse_args(argv)
    if args.pyca_rsa_count is None:
        args.pyca_rsa_count = args.rsa_count
    if args.openssl_rsa_count is None:
        args.openssl_rsa_count = min(5, args.openssl_count)
    for name in ("count", "pyca_count", "openssl_count", "rsa_count", "pyca_rsa_count",
                 "openssl_rsa_count"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the environment, the table and the ratios; returns 0."""
    args = parse_args(argv)
    openssl = shutil.which("openssl")
    print("dpskit certificate issuance benchmark")
    print("\n".join(describe_environment(openssl)))
    print()

    with tempfile.TemporaryDirectory(prefix="dpskit-bench-") as tmp:
        folder = Path(tmp)
        ec_root = dpskit.CertificateAuthority.create_root("Bench EC Root")
        ec_issuer = make_issuer(ec_root.create_intermediate("Bench EC Intermediate"), folder)
        rsa_issuer = make_issuer(
            dpskit.CertificateAuthority.create_root("Bench RSA Root", algorithm="rsa-2048"), folder
        )
        # Warm-ups outside the timed regions: thread pool start-up, first-call imports.
        dpskit_issue(ec_issuer, "ec-p256", 8)
        pyca_issue(ec_issuer, "ec-p256", 2)

        scenarios = [
            ("EC P-256 leaf <- EC P-256 CA", "ec-p256", ec_issuer, args.count, args.pyca_count,
             args.openssl_count),
            ("RSA-2048 leaf <- RSA-2048 CA", "rsa-2048", rsa_issuer, args.rsa_count,
             args.pyca_rsa_count, args.openssl_rsa_count),
        ]  # fmt: skip
        rows: list[str] = []
        ratios: list[str] = []
        for scenario, algorithm, issuer, n_dpskit, n_pyca, n_openssl in scenarios:
            count, seconds = timed(partial(dpskit_issue, issuer, algorithm, n_dpskit))
            ours = Result(scenario, "dpskit issue_devices (parallel)", count, seconds)
            rows.append(format_row(ours, None))
            count, seconds = timed(partial(pyca_issue, issuer, algorithm, n_pyca))
            pyca = Result(scenario, "pyca/cryptography loop", count, seconds)
            rows.append(format_row(pyca, ours))
            line = f"  {scenario}: dpskit/pyca = {ours.rate / pyca.rate:.1f}x"
            if openssl is not None:
                work = folder / algorithm
                work.mkdir()
                count, seconds = timed(
                    partial(openssl_issue, openssl, issuer, algorithm, n_openssl, work)
                )
                cli = Result(scenario, "openssl CLI (3 processes/device)", count, seconds)
                rows.append(format_row(cli, ours))
                line += f", dpskit/openssl-CLI = {ours.rate / cli.rate:.1f}x"
            else:
                line += ", dpskit/openssl-CLI = n/a (openssl not found)"
            ratios.append(line)

        print(TABLE_HEADER)
        print("-" * len(TABLE_HEADER))
        print("\n".join(rows))
        print()
        print("ratios (certificates/second, higher = dpskit faster):")
        print("\n".join(ratios))

        if not args.no_rsa4096:
            print()
            _, ours_seconds = timed(dpskit_rsa4096_root)
            verdict = "OK" if ours_seconds < 3.0 else "SLOW"
            # One sample each: RSA key generation time varies a lot with the primes found.
            print(f"RSA-4096 root CA, dpskit: {ours_seconds:.2f} s (target < 3 s: {verdict})")
            _, pyca_seconds = timed(pyca_rsa4096_root)
            print(f"RSA-4096 root CA, pyca:   {pyca_seconds:.2f} s")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
