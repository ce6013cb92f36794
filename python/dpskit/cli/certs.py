"""``dpskit certs``: certificates for Azure DPS X.509 attestation.

Every certificate command works on a folder laid out the way the walkthrough expects::

    certs/root.{cert,key,chain,fullchain}.pem
    certs/intermediate.{cert,key,chain,fullchain}.pem
    certs/devices/<registration-id>.{cert,key,chain,fullchain}.pem + .pfx
    certs/verification/verification-<ca>.cert.pem

Passwords are read from environment variables named with ``--...-env VAR`` options, never from
the command line itself: arguments end up in shell history and in ``ps`` output.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from dpskit._native import (
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    validate_registration_id,
    verify_chain,
)
from dpskit.cli.argtypes import _add_algorithm, non_negative_int, positive_int
from dpskit.cli.files import (
    _files,
    _load_issuer,
    _password_from_env,
    _refuse_overwrite,
    _verification_file,
    _write_private,
    _write_public,
)
from dpskit.cli.output import (
    _describe_password,
    _display,
    _Formatter,
    _print_fields,
    _print_files,
    _utc,
)
from dpskit.errors import CertificateError, ConfigError

DEFAULT_DIR = "certs"
DEFAULT_ROOT_CN = "dpskit Test Root CA"
DEFAULT_INTERMEDIATE_CN = "dpskit Test Intermediate CA"


def _ca_summary(ca: CertificateAuthority) -> list[tuple[str, object]]:
    cert = ca.certificate
    path_length = cert.path_length
    return [
        ("subject", cert.subject),
        ("issuer", cert.issuer),
        ("algorithm", ca.algorithm),
        ("serial", cert.serial_number),
        ("sha1 thumbprint", cert.thumbprint_sha1),
        ("valid until", _utc(cert.not_after)),
        ("path length", "unlimited" if path_length is None else path_length),
    ]


def _read_ids(path: Path) -> list[str]:
    """Registration ids from a file: one per line, blank lines and ``#`` comments ignored."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            validate_registration_id(line)
        except CertificateError as exc:
            raise CertificateError(f"{_display(path)} line {number}: {exc}") from None
        if line in seen:
            # Two devices with one id would overwrite each other's files.
            raise ConfigError(
                f"{_display(path)} line {number}: duplicate registration id '{line}' "
                f"(first on line {seen[line]})"
            )
        seen[line] = number
        ids.append(line)
    if not ids:
        raise ConfigError(f"{_display(path)} holds no registration ids")
    return ids


def _certificate_record(cert: Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject,
        "issuer": cert.issuer,
        "serial_number": cert.serial_number,
        "thumbprint_sha1": cert.thumbprint_sha1,
        "thumbprint_sha256": cert.thumbprint_sha256,
        "not_before": _utc(cert.not_before),
        "not_after": _utc(cert.not_after),
        "is_ca": cert.is_ca,
        "path_length": cert.path_length,
        "self_signed": cert.is_self_signed,
        "key_algorithm": cert.key_algorithm,
        "signature_algorithm": cert.signature_algorithm,
        "key_usage": list(cert.key_usage),
        "extended_key_usage": list(cert.extended_key_usage),
        "valid_now": cert.is_valid_at(),
    }


def _dedupe(certs: Iterable[Certificate]) -> list[Certificate]:
    unique: list[Certificate] = []
    for cert in certs:
        if cert not in unique:
            unique.append(cert)
    return unique


def cmd_root(args: argparse.Namespace) -> int:
    """``dpskit certs root``: create a self-signed root CA."""
    folder = Path(args.dir)
    _refuse_overwrite(folder, args.name, args.force)
    key_password = _password_from_env(args.key_password_env, option="--key-password-env")
    ca = CertificateAuthority.create_root(
        args.cn,
        algorithm=args.algorithm,
        days=args.days,
        path_length=args.path_length,
        organization=args.org,
    )
    files = ca.save(folder, name=args.name, key_password=key_password)
    print(f"Root CA '{ca.common_name}' created")
    _print_fields(_ca_summary(ca))
    print("files:")
    _print_files(files)
    if key_password is not None:
        source = _describe_password(args.key_password_env)
        print(f"  (private key encrypted with the password {source})")
    print(f"next: dpskit certs intermediate --dir {args.dir} --issuer {args.name}")
    return 0


def cmd_intermediate(args: argparse.Namespace) -> int:
    """``dpskit certs intermediate``: create an intermediate CA signed by ``--issuer``."""
    folder = Path(args.dir)
    _refuse_overwrite(folder, args.name, args.force)
    issuer = _load_issuer(folder, args.issuer, args.issuer_key_password_env)
    key_password = _password_from_env(args.key_password_env, option="--key-password-env")
    ca = issuer.create_intermediate(
        args.cn,
        algorithm=args.algorithm,
        days=args.days,
        path_length=args.path_length,
        organization=args.org,
    )
    files = ca.save(folder, name=args.name, key_password=key_password)
    print(f"Intermediate CA '{ca.common_name}' created, signed by '{issuer.common_name}'")
    _print_fields(_ca_summary(ca))
    print("files:")
    _print_files(files)
    print(f"next: dpskit certs device my-device-01 --dir {args.dir} --issuer {args.name}")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    """``dpskit certs device``: issue one device certificate (CN = registration id)."""
    validate_registration_id(args.registration_id)
    folder = Path(args.dir)
    out = Path(args.out) if args.out else folder / "devices"
    issuer = _load_issuer(folder, args.issuer, args.issuer_key_password_env)
    pkcs12_password = _password_from_env(args.pkcs12_password_env, option="--pkcs12-password-env")
    device = issuer.issue_device(args.registration_id, algorithm=args.algorithm, days=args.days)
    files = device.save(
        out, pkcs12_password=pkcs12_password or "", legacy_pkcs12=args.legacy_pkcs12
    )
    cert = device.certificate
    print(f"Device certificate '{device.registration_id}' issued by '{issuer.common_name}'")
    _print_fields(
        [
            ("subject", cert.subject),
            ("issuer", cert.issuer),
            ("algorithm", device.algorithm),
            ("serial", cert.serial_number),
            ("sha1 thumbprint", cert.thumbprint_sha1),
            ("valid until", _utc(cert.not_after)),
            ("pfx password", _describe_password(args.pkcs12_password_env)),
            ("pfx format", "legacy (3DES/SHA-1)" if args.legacy_pkcs12 else "AES-256/SHA-256"),
        ]
    )
    print("files:")
    _print_files(files)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """``dpskit certs devices``: issue many device certificates at once, with a manifest."""
    if args.ids_file is not None:
        ids = _read_ids(Path(args.ids_file))
    else:
        ids = [
            f"{args.prefix}{number:0{args.width}d}"
            for number in range(args.start, args.start + args.count)
        ]
        for registration_id in (ids[0], ids[-1]):
            # The longest id is the last one; checking both ends covers prefix and width.
            validate_registration_id(registration_id)
    folder = Path(args.dir)
    out = Path(args.out) if args.out else folder / "devices"
    issuer = _load_issuer(folder, args.issuer, args.issuer_key_password_env)
    pkcs12_password = _password_from_env(args.pkcs12_password_env, option="--pkcs12-password-env")
    if pkcs12_password is None and args.pkcs12:
        pkcs12_password = ""
    manifest: Literal["csv", "json"] | None
    manifest = None if args.manifest == "none" else args.manifest
    started = time.perf_counter()
    devices = issuer.issue_devices(
        ids,
        algorithm=args.algorithm,
        days=args.days,
        output_dir=out,
        manifest=manifest,
        pkcs12_password=pkcs12_password,
    )
    elapsed = time.perf_counter() - started
    rate = len(devices) / elapsed if elapsed > 0 else float("inf")
    print(f"{len(devices)} device certificates issued by '{issuer.common_name}'")
    fields: list[tuple[str, object]] = [
        ("devices", len(devices)),
        ("first", devices[0].registration_id),
        ("last", devices[-1].registration_id),
        ("algorithm", args.algorithm),
        ("time", f"{elapsed:.2f} s"),
        ("rate", f"{rate:,.0f} devices/s"),
        ("folder", _display(out)),
        (
            "pfx",
            "no"
            if pkcs12_password is None
            else f"yes, password {_describe_password(args.pkcs12_password_env)}",
        ),
    ]
    if manifest is not None:
        fields.append(("manifest", _display(out / f"manifest.{manifest}")))
    _print_fields(fields)
    return 0


def cmd_verification(args: argparse.Namespace) -> int:
    """``dpskit certs verification``: proof-of-possession certificate for a DPS code."""
    folder = Path(args.dir)
    out = Path(args.out) if args.out else folder / "verification"
    issuer = _load_issuer(folder, args.issuer, args.issuer_key_password_env)
    cert = issuer.create_verification_certificate(args.code, days=args.days)
    out.mkdir(parents=True, exist_ok=True)
    path = cert.save(_verification_file(out, args.issuer))
    print(f"Verification certificate for '{issuer.common_name}'")
    _print_fields(
        [
            ("subject", cert.subject),
            ("issuer", cert.issuer),
            ("valid until", _utc(cert.not_after)),
            ("file", _display(path)),
        ]
    )
    print("upload the file in DPS (Certificates > your CA > Verify) to prove you hold the CA key")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    """``dpskit certs csr``: sign a device's certificate signing request."""
    csr_pem = Path(args.csr_file).read_bytes()
    folder = Path(args.dir)
    issuer = _load_issuer(folder, args.issuer, args.issuer_key_password_env)
    cert = issuer.sign_csr(csr_pem, registration_id=args.registration_id, days=args.days)
    name = cert.common_name or "device"
    out = Path(args.out) if args.out else _files(folder / "devices", name)["certificate"]
    # With --chain the file is what the device presents in TLS: its certificate, then its issuers.
    text = cert.pem + issuer.chain_pem if args.chain else cert.pem
    _write_public(out, text)
    print(f"CSR signed by '{issuer.common_name}'")
    _print_fields(
        [
            ("subject", cert.subject),
            ("issuer", cert.issuer),
            ("algorithm", cert.key_algorithm),
            ("serial", cert.serial_number),
            ("sha1 thumbprint", cert.thumbprint_sha1),
            ("valid until", _utc(cert.not_after)),
            ("file", _display(out) + (" (with issuer chain)" if args.chain else "")),
        ]
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``dpskit certs inspect``: show what is in certificate files."""
    records: list[dict[str, Any]] = []
    for name in args.files:
        path = Path(name)
        certs = Certificate.load_all(path)
        for index, cert in enumerate(certs):
            record: dict[str, Any] = {"file": str(path), "index": index}
            record.update(_certificate_record(cert))
            records.append(record)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    counts: dict[str, int] = {}
    for record in records:
        counts[record["file"]] = counts.get(record["file"], 0) + 1
    for number, record in enumerate(records):
        if number:
            print()
        total = counts[record["file"]]
        print(f"{record['file']} [{record['index'] + 1}/{total}]")
        path_length = record["path_length"]
        _print_fields(
            [
                ("subject", record["subject"]),
                ("issuer", record["issuer"]),
                ("serial", record["serial_number"]),
                ("sha1 thumbprint", record["thumbprint_sha1"]),
                ("sha256 thumbprint", record["thumbprint_sha256"]),
                ("not before", record["not_before"]),
                ("not after", record["not_after"]),
                ("valid now", "yes" if record["valid_now"] else "no"),
                ("CA", "yes" if record["is_ca"] else "no"),
                ("path length", "-" if path_length is None else path_length),
                ("self-signed", "yes" if record["self_signed"] else "no"),
                ("key algorithm", record["key_algorithm"]),
                ("signature", record["signature_algorithm"]),
                ("key usage", ", ".join(record["key_usage"]) or "-"),
                ("extended key usage", ", ".join(record["extended_key_usage"]) or "-"),
            ]
        )
    return 0


def cmd_pkcs12(args: argparse.Namespace) -> int:
    """``dpskit certs pkcs12``: bundle a certificate (and its chain) with its key as a PFX."""
    key_password = _password_from_env(args.key_password_env, option="--key-password-env")
    password = _password_from_env(args.password_env, option="--password-env") or ""
    if args.chain:
        certs = Certificate.load_all(Path(args.cert)) + Certificate.load_all(Path(args.chain))
        pem = "".join(cert.pem for cert in _dedupe(certs))
        key_pem = Path(args.key).read_bytes()
        device = DeviceCertificate.from_pem(pem, key_pem, password=key_password)
    else:
        device = DeviceCertificate.load(args.cert, args.key, password=key_password)
    out = _write_private(Path(args.out), device.to_pkcs12(password, legacy=args.legacy))
    print(f"PKCS#12 file written for '{device.certificate.common_name}'")
    _print_fields(
        [
            ("subject", device.certificate.subject),
            ("chain", f"{len(device.issuers)} issuer certificate(s) included"),
            ("password", _describe_password(args.password_env)),
            ("format", "legacy (3DES/SHA-1)" if args.legacy else "AES-256/SHA-256"),
            ("file", _display(out)),
        ]
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``dpskit certs verify``: check that a certificate chains to a trusted CA."""
    leaf, *rest = Certificate.load_all(Path(args.leaf_file))
    pool = list(rest)
    for chain in args.chain:
        pool.extend(Certificate.load_all(Path(chain)))
    # A self-signed certificate found beside the leaf is no reason to trust it: anchors only
    # come from --ca-file (or the default root).
    intermediates = [cert for cert in _dedupe(pool) if not cert.is_self_signed]
    if args.ca_file:
        ca_files = [Path(name) for name in args.ca_file]
    else:
        default_root = _files(Path(args.dir), "root")["certificate"]
        if not default_root.exists():
            raise ConfigError(
                f"no trust anchor: pass --ca-file "
                f"(the default {_display(default_root)} does not exist)"
            )
        ca_files = [default_root]
    anchors: list[Certificate] = []
    for ca_file in ca_files:
        anchors.extend(Certificate.load_all(ca_file))
    try:
        verified = verify_chain(leaf, intermediates, anchors)
    except CertificateError as exc:
        print(f"FAILED: {leaf.subject}")
        _print_fields([("reason", exc)])
        return 1
    print(f"OK: {leaf.subject}")
    last = len(verified) - 1
    rows: list[tuple[str, object]] = []
    for index, cert in enumerate(verified):
        role = "leaf" if index == 0 else "trust anchor" if index == last else "intermediate"
        rows.append((f"[{index}] {role}", cert.subject))
    _print_fields(rows)
    return 0


_WALKTHROUGH = """\
walkthrough (certificates for a DPS enrollment group):
  dpskit certs root                     # certs/root.*: upload root.cert.pem to DPS
  dpskit certs verification CODE        # proof of possession with DPS's verification code
  dpskit certs intermediate             # certs/intermediate.*
  dpskit certs device my-device-01      # certs/devices/my-device-01.* (+ .pfx)
  dpskit certs devices --count 100      # many devices at once, with a manifest
  dpskit demo                           # the whole walkthrough against the local cloud

Passwords are only read from environment variables (--...-env VAR), never from arguments.
"""


def _add_issuer(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--issuer",
        default=default,
        metavar="NAME",
        help="issuing CA: DIR/NAME.cert.pem + DIR/NAME.key.pem (and DIR/NAME.fullchain.pem)",
    )
    parser.add_argument("--dir", default=DEFAULT_DIR, help="folder holding the CA files")
    parser.add_argument(
        "--issuer-key-password-env",
        metavar="VAR",
        help="environment variable holding the password of the issuer's encrypted key",
    )


def add_certs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dpskit certs`` and its subcommands."""
    certs = commands.add_parser(
        "certs",
        help="create, sign, inspect and verify X.509 certificates",
        description="Create, sign, inspect and verify X.509 certificates for DPS.",
        epilog=_WALKTHROUGH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certs.set_defaults(handler=None, parser=certs)
    sub = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")

    # root
    p = sub.add_parser(
        "root",
        help="create a self-signed root CA",
        description="Create a self-signed root CA and write\n"
        "DIR/NAME.{cert,key,chain,fullchain}.pem.\n"
        "Upload NAME.cert.pem to DPS, then prove possession with 'dpskit certs verification'.",
        formatter_class=_Formatter,
    )
    p.add_argument("--cn", default=DEFAULT_ROOT_CN, help="common name of the CA")
    p.add_argument("--org", metavar="ORGANIZATION", help="organization (O=) of the subject")
    _add_algorithm(p, "key algorithm (rsa-4096 is what Azure's tutorial uses, but slow to make)")
    p.add_argument("--days", type=int, default=3650, help="validity in days")
    p.add_argument(
        "--path-length",
        type=non_negative_int,
        metavar="N",
        help="how many intermediate CAs may follow (default: no limit)",
    )
    p.add_argument("--dir", default=DEFAULT_DIR, help="output folder")
    p.add_argument("--name", default="root", help="file name stem")
    p.add_argument(
        "--key-password-env",
        metavar="VAR",
        help="encrypt the private key with the password in this environment variable",
    )
    p.add_argument("--force", action="store_true", help="replace an existing CA of that name")
    p.set_defaults(handler=cmd_root)

    # intermediate
    p = sub.add_parser(
        "intermediate",
        help="create an intermediate CA signed by another CA",
        description="Create an intermediate CA signed by --issuer and write "
        "DIR/NAME.{cert,key,chain,fullchain}.pem.",
        formatter_class=_Formatter,
    )
    _add_issuer(p, "root")
    p.add_argument("--cn", default=DEFAULT_INTERMEDIATE_CN, help="common name of the CA")
    p.add_argument("--org", metavar="ORGANIZATION", help="organization (O=) of the subject")
    _add_algorithm(p)
    p.add_argument("--days", type=int, default=1825, help="validity in days")
    p.add_argument(
        "--path-length",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="how many further intermediate CAs may follow",
    )
    p.add_argument("--name", default="intermediate", help="file name stem")
    p.add_argument(
        "--key-password-env",
        metavar="VAR",
        help="encrypt the new private key with the password in this environment variable",
    )
    p.add_argument("--force", action="store_true", help="replace an existing CA of that name")
    p.set_defaults(handler=cmd_intermediate)

    # device
    p = sub.add_parser(
        "device",
        help="issue one device certificate",
        description="Issue a device certificate whose CN is the DPS registration id and write\n"
        "OUT/ID.{cert,key,chain,fullchain}.pem and OUT/ID.pfx.",
        formatter_class=_Formatter,
    )
    p.add_argument("registration_id", metavar="REGISTRATION_ID", help="DPS registration id (= CN)")
    _add_issuer(p, "intermediate")
    _add_algorithm(p)
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.add_argument("--out", help="output folder (default: DIR/devices)")
    p.add_argument(
        "--pkcs12-password-env",
        metavar="VAR",
        help="protect the .pfx with the password in this environment variable (default: empty)",
    )
    p.add_argument(
        "--legacy-pkcs12",
        action="store_true",
        help="write the .pfx with 3DES/SHA-1 for old readers (e.g. OpenSSL 1.x, older Windows)",
    )
    p.set_defaults(handler=cmd_device)

    # devices
    p = sub.add_parser(
        "devices",
        help="issue many device certificates, with a manifest",
        description="Issue many device certificates in parallel into OUT, with a manifest.",
        formatter_class=_Formatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--count", type=positive_int, metavar="N", help="number of devices")
    which.add_argument(
        "--ids-file",
        metavar="FILE",
        help="file with one registration id per line (blank lines and # comments ignored)",
    )
    p.add_argument("--prefix", default="device-", help="registration id prefix (with --count)")
    p.add_argument("--start", type=non_negative_int, default=1, help="first number (with --count)")
    p.add_argument(
        "--width", type=non_negative_int, default=5, help="zero-padded digits (with --count)"
    )
    _add_issuer(p, "intermediate")
    _add_algorithm(p)
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.add_argument("--out", help="output folder (default: DIR/devices)")
    p.add_argument(
        "--manifest",
        choices=("csv", "json", "none"),
        default="csv",
        help="write OUT/manifest.csv or .json listing every device",
    )
    p.add_argument(
        "--pkcs12", action="store_true", help="also write a .pfx per device (empty password)"
    )
    p.add_argument(
        "--pkcs12-password-env",
        metavar="VAR",
        help="write a .pfx per device, protected by the password in this environment variable",
    )
    p.set_defaults(handler=cmd_devices)

    # verification
    p = sub.add_parser(
        "verification",
        help="proof-of-possession certificate for a DPS verification code",
        description="Create the proof-of-possession certificate DPS asks for after you upload a\n"
        "CA certificate: CN = the verification code DPS shows, signed by that CA's key.\n"
        "Works for a root and for an intermediate CA. Writes OUT/verification-ISSUER.cert.pem.",
        formatter_class=_Formatter,
    )
    p.add_argument("code", metavar="CODE", help="verification code shown by DPS")
    _add_issuer(p, "root")
    p.add_argument("--days", type=int, default=30, help="validity in days")
    p.add_argument("--out", help="output folder (default: DIR/verification)")
    p.set_defaults(handler=cmd_verification)

    # csr
    p = sub.add_parser(
        "csr",
        help="sign a device's certificate signing request",
        description="Sign a PKCS#10 CSR with the device profile (the key stays on the device).\n"
        "The CN comes from the CSR unless --registration-id is given.",
        formatter_class=_Formatter,
    )
    p.add_argument("csr_file", metavar="CSR_FILE", help="PEM certificate signing request")
    _add_issuer(p, "intermediate")
    p.add_argument("--registration-id", metavar="ID", help="CN to use instead of the CSR's")
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.add_argument("--out", metavar="FILE", help="output file (default: DIR/devices/CN.cert.pem)")
    p.add_argument(
        "--chain",
        action="store_true",
        help="append the issuer chain (what the device presents in TLS)",
    )
    p.set_defaults(handler=cmd_csr)

    # inspect
    p = sub.add_parser(
        "inspect",
        help="show the contents of certificate files",
        description="Show every certificate in each file (PEM with one or more, or DER).",
        formatter_class=_Formatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="certificate file")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.set_defaults(handler=cmd_inspect)

    # pkcs12
    p = sub.add_parser(
        "pkcs12",
        help="bundle a certificate and its key into a .pfx",
        description="Bundle a device certificate (with the chain its file holds) and its private\n"
        "key into a PKCS#12 (.pfx) file, written readable by the owner only.",
        formatter_class=_Formatter,
    )
    p.add_argument("--cert", required=True, metavar="FILE", help="certificate (or chain) PEM")
    p.add_argument("--key", required=True, metavar="FILE", help="private key PEM")
    p.add_argument("--chain", metavar="FILE", help="extra issuer certificates to include")
    p.add_argument(
        "--key-password-env", metavar="VAR", help="environment variable with the key's password"
    )
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="environment variable with the .pfx password (default: empty)",
    )
    p.add_argument("--legacy", action="store_true", help="3DES/SHA-1 for old readers")
    p.add_argument("--out", required=True, metavar="FILE", help="output .pfx file")
    p.set_defaults(handler=cmd_pkcs12)

    # verify
    p = sub.add_parser(
        "verify",
        help="verify that a certificate chains to a trusted CA",
        description="Verify LEAF_FILE's chain (signatures, validity, CA flags, path lengths).\n"
        "Certificates after the first in LEAF_FILE and in --chain files serve as intermediates;\n"
        "trust anchors come from --ca-file (default: DIR/root.cert.pem).\n"
        "Exit status 0 when the chain verifies, 1 when it does not.",
        formatter_class=_Formatter,
    )
    p.add_argument("leaf_file", metavar="LEAF_FILE", help="certificate to verify (PEM or DER)")
    p.add_argument(
        "--chain", action="append", default=[], metavar="FILE", help="intermediate certificates"
    )
    p.add_argument(
        "--ca-file", action="append", metavar="FILE", help="trusted CA certificate(s), repeatable"
    )
    p.add_argument("--dir", default=DEFAULT_DIR, help="folder of the default root.cert.pem")
    p.set_defaults(handler=cmd_verify)
