"""``dpskit doctor device``: why a device cannot provision and what to change (its files
offline; with a DPS, on the local cloud's folder or ``--azure``, its CAs, enrollments and hubs;
with ``--connect`` one traced attempt), and ``dpskit doctor error``: what an error text
means."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from dpskit.cli.output import _Formatter
from dpskit.cli.targets import DEFAULT_LOCAL_DIR, _target_options, open_target
from dpskit.doctor import CAUSES, DoctorReport, doctor, explain_error, explanation_dict
from dpskit.errors import ConfigError

__all__ = ["add_doctor_commands"]

_EXIT_CODES = "exit status: 0 healthy, 1 problems found (or the inputs could not be used)"


def _wants_dps(args: argparse.Namespace) -> bool:
    return bool(args.dps or args.connect or args.local or args.azure)


def _run(args: argparse.Namespace, dps: Any) -> DoctorReport:
    return doctor(
        args.certificate,
        key=args.key,
        chain=args.chain,
        pkcs12=args.pkcs12,
        password_env=args.password_env,
        registration_id=args.registration_id,
        trust=args.trust_bundle,
        dps=dps,
        connect=args.connect,
        timeout=args.timeout,
    )


def cmd_device(args: argparse.Namespace) -> int:
    """``dpskit doctor device``."""
    if args.certificate is None and args.pkcs12 is None:
        raise ConfigError("give the device's certificate file (or --pkcs12)")
    if not _wants_dps(args):
        report = _run(args, None)
    else:
        with open_target(args, Path(DEFAULT_LOCAL_DIR)) as cloud:
            dps = cloud.dps(args.dps) if args.dps else next(iter(cloud.all_dps()), None)
            if dps is None:
                raise ConfigError("the cloud has no DPS instance: name one with --dps")
            report = _run(args, dps)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.healthy else 1


def cmd_error(args: argparse.Namespace) -> int:
    """``dpskit doctor error``."""
    text = " ".join(args.text)
    explanation = explain_error(text)
    if args.json:
        print(json.dumps(explanation_dict(explanation), indent=2))
        return 0 if explanation.known else 1
    where = []
    if explanation.code is not None:
        where.append(f"code {explanation.code}")
    if explanation.status is not None:
        label = "CONNACK" if explanation.service == "mqtt" else "status"
        where.append(f"{label} {explanation.status}")
    if explanation.service is not None:
        where.append(explanation.service)
    suffix = f" ({', '.join(where)})" if where else ""
    print(f"{explanation.title}{suffix}")
    print(textwrap.fill(explanation.meaning, 96, initial_indent="  ", subsequent_indent="  "))
    print("likely causes, most likely first:")
    for i, cause in enumerate(explanation.causes, 1):
        print(textwrap.fill(cause, 96, initial_indent=f"  {i}. ", subsequent_indent="     "))
    if explanation.cause_names:
        print("doctor causes: " + ", ".join(explanation.cause_names))
    return 0 if explanation.known else 1


def add_doctor_commands(commands: Any) -> None:
    """Adds ``doctor`` to the top-level subcommands."""
    group = commands.add_parser(
        "doctor",
        help="why a device cannot provision, and what to change; what an error means",
    )
    sub = group.add_subparsers(title="commands", metavar="COMMAND")
    group.set_defaults(handler=None, parser=group)
    device = sub.add_parser(
        "device",
        parents=[_target_options()],
        formatter_class=_Formatter,
        help="check a device's certificate, key, chain and trust bundle (and its DPS)",
        description=(
            "Checks the device's credential as the device holds it (offline), its server trust\n"
            "bundle, and with a DPS (--dps NAME, --local DIR or --azure) the DPS's CA\n"
            "certificates, the enrollment it would pick, its linked hubs, the registration and\n"
            "the hub identity; --connect also makes one traced provisioning attempt.\n\n"
            + textwrap.fill("Causes it names: " + ", ".join(CAUSES), 84, break_on_hyphens=False)
        ),
        epilog=_EXIT_CODES,
    )
    device.add_argument(
        "certificate",
        nargs="?",
        metavar="CERT",
        help="the device's certificate file (PEM or DER; leaf first, may hold its chain)",
    )
    device.add_argument("--key", metavar="FILE", help="the device's private key file")
    device.add_argument("--chain", metavar="FILE", help="a separate chain file the device sends")
    device.add_argument("--pkcs12", metavar="FILE", help="a PKCS#12 (.pfx) file instead of CERT")
    device.add_argument(
        "--password-env",
        metavar="VAR",
        help="variable holding the PKCS#12 file's (or the encrypted key's) password",
    )
    device.add_argument(
        "--registration-id", help="the registration id the device uses (default: the leaf's CN)"
    )
    device.add_argument(
        "--trust-bundle",
        metavar="FILE",
        help="the CA bundle the device checks servers against",
    )
    device.add_argument(
        "--dps", metavar="NAME", help="the DPS to check against (default: the only one)"
    )
    device.add_argument(
        "--connect", action="store_true", help="make one traced provisioning attempt"
    )
    device.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds the traced attempt (--connect) may take",
    )
    device.set_defaults(handler=cmd_device, parser=device)
    error = sub.add_parser(
        "error",
        formatter_class=_Formatter,
        help="what an error text or code means (401002, CONNACK 5, a TLS message, ...)",
        description=(
            "Reads any SDK's error text: a code (401002), a JSON body, an HTTP status, a\n"
            "CONNACK return code, a TLS library's message or an SDK's own words, and prints\n"
            "what it means and its likely causes, most likely first."
        ),
        epilog="exit status: 0 recognised, 1 not recognised",
    )
    error.add_argument("text", nargs="+", help="the error message or code")
    error.add_argument("--json", action="store_true", help="print JSON instead of text")
    error.set_defaults(handler=cmd_error, parser=error)
