"""The ``dpskit`` command line: certificates for Azure DPS X.509 attestation, and a demo.

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
import asyncio
import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TextIO

from ._cli_types import non_negative_int, positive_int
from ._native import (
    ALGORITHMS,
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    validate_registration_id,
    verify_chain,
    write_secret,
)
from .cli_cloud import add_azure_options, add_cloud_commands
from .cli_device import add_device_commands
from .cli_fleet import add_fleet_commands
from .errors import CertificateError, ConfigError, DpsKitError

__all__ = ["main"]

DEFAULT_DIR = "certs"
DEFAULT_ROOT_CN = "dpskit Test Root CA"
DEFAULT_INTERMEDIATE_CN = "dpskit Test Intermediate CA"
DEFAULT_DEMO_DIR = "dpskit-demo"

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("dpskit")
    except metadata.PackageNotFoundError:
        # Running from a source tree that was never installed.
        return "0+unknown"


def _display(path: Path | str) -> str:
    """Show ``path`` relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def _print_fields(
    fields: Sequence[tuple[str, object]], *, indent: int = 2, out: TextIO | None = None
) -> None:
    """Print ``key: value`` lines with the values aligned."""
    stream = out if out is not None else sys.stdout
    if not fields:
        return
    width = max(len(key) for key, _ in fields) + 1
    pad = " " * indent
    for key, value in fields:
        print(f"{pad}{(key + ':').ljust(width)} {value}", file=stream)


def _print_files(files: dict[str, Path], *, indent: int = 2) -> None:
    labels = {
        "certificate": "certificate",
        "private_key": "private key",
        "chain": "chain",
        "full_chain": "full chain",
        "pkcs12": "pkcs12 (pfx)",
    }
    # A fixed order reads better than whatever order the mapping comes in.
    ordered = [kind for kind in labels if kind in files] + [k for k in files if k not in labels]
    _print_fields(
        [(labels.get(kind, kind), _display(files[kind])) for kind in ordered], indent=indent
    )


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _password_from_env(variable: str | None, *, option: str) -> str | None:
    """Read a password from the environment variable named by a ``--...-env`` option."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"{option} {variable}: environment variable {variable} is not set")
    return value


def _describe_password(variable: str | None) -> str:
    # Only ever say where a password comes from, never what it is.
    return f"from ${variable}" if variable else "(none)"


def _write_private(path: Path, data: bytes) -> Path:
    """Write secret material readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The core's one rule: created 0600, an existing file tightened before the secret is in it.
    write_secret(path, data)
    return path


def _write_public(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="ascii")
    return path


def _refuse_overwrite(folder: Path, name: str, force: bool) -> None:
    key = folder / f"{name}.key.pem"
    if key.exists() and not force:
        raise ConfigError(
            f"{_display(key)} exists already; pass --force to replace this CA "
            "(certificates it issued would no longer chain to a CA you hold)"
        )


def _load_issuer(folder: Path, name: str, password_env: str | None) -> CertificateAuthority:
    """Load the CA ``name`` from ``folder``, with its issuers when a full chain was saved."""
    cert = folder / f"{name}.cert.pem"
    key = folder / f"{name}.key.pem"
    if not cert.exists() or not key.exists():
        missing = cert if not cert.exists() else key
        raise ConfigError(
            f"issuer '{name}' not found: {_display(missing)} does not exist "
            f"(create it with 'dpskit certs root' or 'dpskit certs intermediate', "
            f"or point --dir/--issuer at it)"
        )
    # The full chain lets the loaded CA know its root, so what it issues gets full chains too.
    full_chain = folder / f"{name}.fullchain.pem"
    source = full_chain if full_chain.exists() else cert
    password = _password_from_env(password_env, option="--issuer-key-password-env")
    return CertificateAuthority.load(source, key, password=password)


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


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


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
    path = cert.save(out / f"verification-{args.issuer}.cert.pem")
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
    out = Path(args.out) if args.out else folder / "devices" / f"{name}.cert.pem"
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
        default_root = Path(args.dir) / "root.cert.pem"
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


@contextlib.contextmanager
def _demo_cloud(args: argparse.Namespace, cloud_dir: Path) -> Iterator[tuple[Any, str]]:
    """The demo's cloud and the suffix of its resource names: the embedded emulator (fresh
    state in DIR/cloud), or Azure, where names must be unique worldwide and what the demo
    creates is deleted at the end unless ``--keep``."""
    import secrets
    import shutil

    from .cli_cloud import azure_cloud
    from .cloud import LocalCloud

    if not args.azure:
        # A rerun starts from a fresh cloud: the demo's state is its output, not user data.
        shutil.rmtree(cloud_dir, ignore_errors=True)
        with LocalCloud(cloud_dir, port=args.port, poll_retry_after=0) as cloud:
            yield cloud, ""
        return
    azure = azure_cloud(args)
    suffix = f"-{secrets.token_hex(3)}"
    try:
        yield azure, suffix
    finally:
        if args.keep:
            print(f"\nKept on Azure (they cost money): demo-hub{suffix}, demo-dps{suffix}")
        else:
            print("\nDeleting what the demo created on Azure ...")
            for delete, name in (
                (azure.delete_dps, f"demo-dps{suffix}"),
                (azure.delete_hub, f"demo-hub{suffix}"),
            ):
                try:
                    delete(name)
                    print(f"  deleted {name}")
                except DpsKitError as error:
                    print(f"  could not delete {name}: {error}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    """``dpskit demo``: the DPS X.509 walkthrough end to end, against the embedded emulator or
    (``--azure``) real Azure."""
    from .cloud import LocalCloud
    from .provisioning import provision_devices

    base = Path(args.dir)
    certs = base / "certs"
    devices_dir = certs / "devices"
    verification_dir = certs / "verification"
    cloud_dir = base / "cloud"
    steps = 9
    started = time.perf_counter()
    step_started = [started]

    def step(number: int, title: str) -> None:
        now = time.perf_counter()
        if number > 1:
            print(f"  ({(now - step_started[0]) * 1000:.0f} ms)")
        step_started[0] = now
        print(f"\n[{number}/{steps}] {title}")

    where = "Azure" if args.azure else "the embedded local cloud"
    print(f"dpskit demo: the Azure DPS X.509 walkthrough against {where}")
    _print_fields([("folder", _display(base)), ("algorithm", args.algorithm)])

    with _demo_cloud(args, cloud_dir) as (cloud, suffix):
        local = isinstance(cloud, LocalCloud)
        wait = "" if local else " (a few minutes on Azure)"
        step(1, f"Create an IoT hub and a DPS instance, and link them{wait}")
        hub = cloud.create_hub(f"demo-hub{suffix}", args.location)
        dps = cloud.create_dps(f"demo-dps{suffix}", args.location)
        cloud.link_hub(dps, hub)
        trust = (
            f"{_display(cloud_dir / 'emulator-ca.cert.pem')} (the emulator's CA)"
            if local
            else (args.trust_file or "the system's trusted roots")
        )
        _print_fields(
            [
                ("hub", f"{hub.name} at {hub.host_name}"),
                ("dps", f"{dps.name}, ID scope {dps.id_scope}, endpoint {dps.device_endpoint}"),
                ("trust", trust),
            ]
        )

        step(2, "Root CA (self-signed)")
        root = CertificateAuthority.create_root("dpskit Demo Root CA", algorithm=args.algorithm)
        root.save(certs, name="root")
        _print_fields(
            [
                ("subject", root.certificate.subject),
                ("thumbprint", root.certificate.thumbprint_sha1),
                ("valid until", _utc(root.certificate.not_after)),
            ]
        )

        step(3, "Intermediate CA (signed by the root; it signs the devices)")
        intermediate = root.create_intermediate(
            "dpskit Demo Intermediate CA", algorithm=args.algorithm
        )
        intermediate.save(certs, name="intermediate")
        _print_fields(
            [
                ("subject", intermediate.certificate.subject),
                ("issuer", intermediate.certificate.issuer),
                ("path length", intermediate.certificate.path_length),
            ]
        )

        step(4, "Upload both CAs to DPS and prove possession of each")
        verification_dir.mkdir(parents=True, exist_ok=True)
        for name, ca in (("root", root), ("intermediate", intermediate)):
            uploaded = dps.upload_ca_certificate(name, ca)
            code = dps.generate_verification_code(name)
            verification = ca.create_verification_certificate(code)
            path = verification.save(verification_dir / f"verification-{name}.cert.pem")
            verified = dps.verify_certificate(name, verification)
            _print_fields(
                [
                    (name, f"uploaded, verified={uploaded.is_verified}"),
                    ("  code", code),
                    ("  signed", f"{_display(path)} (CN = code, signed by the {name} CA)"),
                    ("  now", f"verified={verified.is_verified}"),
                ]
            )

        step(5, "Enrollment group on the intermediate CA")
        group = dps.create_enrollment_group(
            "demo-devices", ca_reference="intermediate", allocation_policy="hashed", hubs=[hub]
        )
        _print_fields(
            [
                ("group", group.enrollment_group_id),
                ("attestation", f"X.509, CA reference '{group.ca_references[0]}'"),
                ("allocation", f"{group.allocation_policy} over {', '.join(group.iot_hubs)}"),
            ]
        )

        count = args.devices
        step(6, f"{count} device certificates (CN = registration id, full chain, PFX)")
        ids = [f"demo-device-{number:03d}" for number in range(1, count + 1)]
        devices = intermediate.issue_devices(
            ids, algorithm=args.algorithm, output_dir=devices_dir, pkcs12_password=""
        )
        _print_fields(
            [
                (device.registration_id, f"serial {device.certificate.serial_number}")
                for device in devices
            ]
        )
        for device in devices:
            chain = verify_chain(
                device.certificate,
                [cert for cert in device.issuers if not cert.is_self_signed],
                [root.certificate],
            )
            names = " -> ".join(cert.common_name or cert.subject for cert in chain)
            _print_fields([(device.registration_id, f"chain OK ({names})")])

        step(7, "Provision the devices through DPS (TLS with the device chain, MQTT)")
        if local:
            cloud.trace(ids[0])
        outcomes = provision_devices(dps, devices)
        for outcome in outcomes:
            result = (
                f"assigned to {outcome.assigned_hub} as {outcome.device_id} "
                f"({outcome.substatus}, {outcome.seconds * 1000:.0f} ms)"
                if outcome.ok
                else f"failed: {outcome.error}"
            )
            _print_fields([(outcome.registration_id, result)])
        if local:
            print(f"\n  The exchange of {ids[0]}, as the emulator recorded it:")
            for event in cloud.trace_events(ids[0]):
                status = f" {event.status}" if event.status is not None else ""
                topic = f" {event.topic}" if event.topic else ""
                print(f"    {event.direction:14} {event.kind}{status}{topic}")
            identities = hub.devices()
            print(f"\n  {hub.name} now holds {len(identities)} X.509 (thumbprint) identities.")

        step(8, "Each device connects to its hub with its certificate and sends telemetry")
        sent = asyncio.run(_demo_telemetry(cloud, outcomes, devices))
        if local:
            # The emulator can show what its hub stored; on Azure that takes a consumer of
            # the hub's Event Hubs endpoint, and the acknowledgements above are the proof.
            for outcome in outcomes:
                if outcome.ok:
                    received = len(hub.telemetry(outcome.device_id))
                    _print_fields(
                        [(outcome.registration_id, f"{received} messages stored by the hub")]
                    )

        step(9, "Files written (private keys and .pfx files readable by the owner only)")
        for line in _summarize_files(certs):
            print(f"  {line}")
        if local:
            print(f"  {_display(cloud_dir)}/: the local cloud's state and CA (reused on a rerun)")

    print(f"  ({(time.perf_counter() - step_started[0]) * 1000:.0f} ms)")
    print("\nSummary")
    print(f"  {'device':18} {'assigned hub':14} {'status':10} {'messages':>8}")
    for outcome in outcomes:
        hub_host = outcome.assigned_hub or "-"
        status = "assigned" if outcome.ok else "failed"
        messages = sent.get(outcome.registration_id, 0)
        print(f"  {outcome.registration_id:18} {hub_host:14} {status:10} {messages:8d}")
    failed = sum(not o.ok for o in outcomes) + sum(
        sent.get(o.registration_id, 0) != DEMO_MESSAGES for o in outcomes if o.ok
    )
    total = time.perf_counter() - started
    verdict = "Done" if not failed else "Failed"
    print(f"\n{verdict} in {total:.1f} s. Certificates and state: {_display(base)}")
    return 1 if failed else 0


#: Messages each demo device sends.
DEMO_MESSAGES = 3


async def _demo_telemetry(
    cloud: Any, outcomes: Sequence[Any], devices: Sequence[DeviceCertificate]
) -> dict[str, int]:
    """Connects every assigned device to its hub and sends a few readings; returns how many
    messages each got acknowledged."""
    from .device import HubClient

    by_id = {d.registration_id: d for d in devices}
    sent: dict[str, int] = {}

    async def run(outcome: Any) -> None:
        device = by_id[outcome.registration_id]
        result = outcome.result
        async with HubClient.connect(result, certificate=device, trust=cloud.trust_pem) as client:
            for reading in range(DEMO_MESSAGES):
                await client.send_telemetry(
                    {"temperature": round(21.0 + reading * 0.5, 1), "sequence": reading}
                )
                sent[outcome.registration_id] = reading + 1
        _print_fields([(outcome.registration_id, f"connected, {DEMO_MESSAGES} acknowledged")])

    await asyncio.gather(*(run(o) for o in outcomes if o.ok))
    return sent


_SUFFIX_ORDER = ("cert", "key", "chain", "fullchain")


def _summarize_files(base: Path) -> list[str]:
    """Files under ``base``, one line per name stem: ``root.{cert,key,chain,fullchain}.pem``."""
    folders: dict[Path, dict[str, list[str]]] = {}
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        stem, _, rest = path.name.partition(".")
        folders.setdefault(path.parent, {}).setdefault(stem, []).append(rest)
    lines: list[str] = []
    for folder in sorted(folders):
        lines.append(_display(folder) + "/")
        stems = folders[folder]
        # CAs in the order they are made, everything else alphabetically.
        for stem in sorted(stems, key=lambda s: (s != "root", s != "intermediate", s)):
            pem = sorted(
                (r.removesuffix(".pem") for r in stems[stem] if r.endswith(".pem")),
                key=lambda part: (_SUFFIX_ORDER.index(part) if part in _SUFFIX_ORDER else 9, part),
            )
            others = sorted(r for r in stems[stem] if not r.endswith(".pem"))
            names = []
            if len(pem) == 1:
                names.append(f"{stem}.{pem[0]}.pem")
            elif pem:
                names.append(f"{stem}.{{{','.join(pem)}}}.pem")
            for other in others:
                if not other:
                    names.append(stem)  # a file name without any dot
                else:
                    names.append(f".{other}" if names else f"{stem}.{other}")
            lines.append("  " + " + ".join(names))
    return lines


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep hand-made line breaks in descriptions and show the defaults worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # "(default: None)" or "(default: False)" would only be noise.
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def _add_algorithm(parser: argparse.ArgumentParser, help_text: str = "key algorithm") -> None:
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ec-p256", help=help_text)


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpskit",
        description="Azure Device Provisioning Service with self-signed X.509 certificates.",
        epilog=_WALKTHROUGH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    # demo
    p = commands.add_parser(
        "demo",
        help="run the DPS X.509 walkthrough end to end (embedded emulator, or --azure)",
        description="Start the local cloud, create a hub and a DPS instance, a root and an\n"
        "intermediate CA, prove possession of both, create an enrollment group, issue N\n"
        "devices, provision them through DPS, connect each to its hub and send telemetry.\n"
        "Certificates and state stay in DIR.\n\n"
        "--azure runs the same steps on real Azure (charges apply): a hub and a DPS with\n"
        "unique names in the resource group, deleted at the end unless --keep. Credential:\n"
        "--token-env, else a service principal from AZURE_CLIENT_ID, AZURE_TENANT_ID and\n"
        "AZURE_CLIENT_SECRET, else `az login`.",
        formatter_class=_Formatter,
    )
    p.add_argument("--dir", default=DEFAULT_DEMO_DIR, help="output folder")
    p.add_argument(
        "--port", type=int, default=0, help="MQTT port of the local cloud (0: any free port)"
    )
    p.add_argument("--devices", type=positive_int, default=3, help="devices to provision")
    _add_algorithm(p, "key algorithm (rsa-4096 as in Azure's tutorial works, but is slower)")
    azure = p.add_argument_group("Azure (charges apply)")
    azure.add_argument("--azure", action="store_true", help="run the steps on real Azure")
    azure.add_argument("--location", default="westeurope", help="Azure region")
    azure.add_argument(
        "--keep", action="store_true", help="keep the hub and DPS instead of deleting them"
    )
    add_azure_options(azure)
    p.set_defaults(handler=cmd_demo, parser=p)

    add_cloud_commands(commands, _Formatter)
    add_device_commands(commands)
    add_fleet_commands(commands)

    # emulator
    p = commands.add_parser(
        "emulator",
        help="run the local cloud (DPS and IoT Hub emulator) until Ctrl-C",
        description="Run the embedded DPS emulator standalone: MQTT over TLS on HOST:PORT, state\n"
        "and the emulator's CA in DIR (kept across runs). Official SDKs connect unchanged\n"
        "when given DIR/emulator-ca.cert.pem as their server verification certificate.",
        formatter_class=_Formatter,
    )
    p.add_argument("--data-dir", default="dpskit-cloud", metavar="DIR", help="state folder")
    p.add_argument("--host", default="127.0.0.1", help="address DPS listens on")
    p.add_argument(
        "--port", type=int, default=8883, help="MQTT port (the official SDKs always use 8883)"
    )
    p.add_argument(
        "--https-port",
        type=int,
        default=0,
        help="port of the ARM and service REST APIs (0: any free port; `dpskit cloud` and "
        "`dpskit dps` find it in DIR)",
    )
    p.add_argument(
        "--poll-retry-after",
        type=non_negative_int,
        default=0,
        help="retry-after seconds DPS advises while assigning (default 0: no wait, as fast as "
        "the machine allows; 3: what Azure sends)",
    )
    p.add_argument(
        "--arm-operation-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="how long ARM's hub and DPS creates and deletes run, as long-running operations "
        "(Activating/Deleting meanwhile)",
    )
    p.add_argument(
        "--throttle-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="answer every Nth request of each REST API with 429 and Retry-After (0: never)",
    )
    p.add_argument(
        "--arm-token-env",
        metavar="VAR",
        help="require this ARM bearer token, read from environment variable VAR (never from an "
        "argument, which other users could read); without it, on a non-loopback --host a random "
        "token is generated and written to DIR/endpoints.json (mode 0600)",
    )
    p.add_argument(
        "--print-loopback-setup",
        type=non_negative_int,
        metavar="N",
        help="print the commands that give N hubs their own loopback addresses after --host on "
        "this OS (macOS has only 127.0.0.1 without them; hubs then share 127.0.0.1 and "
        "localhost, two at most) and exit",
    )
    p.set_defaults(handler=cmd_emulator, parser=p)

    parser.set_defaults(handler=None, parser=parser)
    return parser


def cmd_emulator(args: argparse.Namespace) -> int:
    """``dpskit emulator``: run the local cloud until interrupted."""
    import signal
    import threading

    from .cloud import LocalCloud

    if args.print_loopback_setup is not None:
        from ._native import loopback_setup

        print(loopback_setup(args.host, args.print_loopback_setup), end="")
        return 0
    arm_tokens: list[str] | None = None
    if args.arm_token_env:
        token = os.environ.get(args.arm_token_env, "").strip()
        if not token:
            raise ConfigError(
                f"--arm-token-env {args.arm_token_env}: that environment variable is not set "
                "or empty"
            )
        arm_tokens = [token]
    data_dir = Path(args.data_dir)
    stop = threading.Event()
    # SIGTERM (systemd, kill) stops as cleanly as Ctrl-C; so does Ctrl-Break on Windows, whose
    # consoles send it instead of SIGINT when asked to break.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ctrl_break = getattr(signal, "SIGBREAK", None)
    if ctrl_break is not None:
        signal.signal(ctrl_break, lambda *_: stop.set())
    cloud = LocalCloud(
        data_dir,
        host=args.host,
        port=args.port,
        https_port=args.https_port,
        poll_retry_after=args.poll_retry_after,
        arm_tokens=arm_tokens,
        arm_operation_seconds=args.arm_operation_seconds,
        throttle_every=args.throttle_every,
    )
    # From here on an interrupt at any moment ends in a clean stop.
    try:
        trust = data_dir / "emulator-ca.cert.pem"
        if arm_tokens:
            arm_auth = f"bearer token from ${args.arm_token_env}"
        elif cloud.endpoints_file is not None and cloud.arm_token is not None:
            arm_auth = f"generated bearer token in {_display(cloud.endpoints_file)}"
        else:
            arm_auth = "any bearer token"
        print("dpskit local cloud (DPS and IoT Hub emulator)")
        _print_fields(
            [
                ("mqtt", f"{cloud.host}:{cloud.mqtt_port} (MQTT over TLS 1.2/1.3)"),
                ("arm", f"{cloud.arm_endpoint} (ARM and service REST APIs, {arm_auth})"),
                ("trust", f"{_display(trust)} (pass it as server_verification_cert)"),
                ("state", _display(cloud.data_dir)),
            ]
        )
        for dps in cloud.all_dps():
            print(f"  dps {dps.name}: id scope {dps.id_scope}, endpoint {dps.device_endpoint}")
        for hub in cloud.hubs():
            print(f"  hub {hub.name}: {hub.host_name}")
        print("Ctrl-C stops it; the state stays in the folder.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        cloud.stop()
    print("stopped")
    return 0


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # The Rust core's messages end in "(os error N)", which tells a user nothing more.
        reason = re.sub(r" \(os error \d+\)$", "", exc.strerror)
        return f"{reason}: {exc.filename}"
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``dpskit`` command line and return its exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Expected failures (dpskit errors and file errors)
    print ``error: <message>`` to stderr and return 1; usage errors return 2.
    """
    # Output redirected on Windows uses the ANSI code page, which has no "→": such characters
    # print as "?" rather than failing a command whose work is already done.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help, --version and usage errors; report that as a status.
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: Handler | None = args.handler
    if handler is None:
        args.parser.print_help()
        return 2
    try:
        return handler(args)
    except (DpsKitError, OSError) as exc:
        print(f"error: {_describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
