"""``dpskit cloud`` and ``dpskit dps``: the walkthrough's management steps from a shell (hubs,
DPS instances and links; CA certificates, proof of possession, enrollment groups,
registrations), on the target :mod:`dpskit.cli.targets` opens."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from dpskit._native import Certificate
from dpskit.cli.files import _load_issuer
from dpskit.cli.output import _Formatter
from dpskit.cli.targets import DEFAULT_LOCAL_DIR, _target_options, open_target
from dpskit.cloud import Dps, EnrollmentGroup
from dpskit.cloud.base import _Cloud
from dpskit.errors import ConfigError


def _open_cloud(args: argparse.Namespace) -> contextlib.AbstractContextManager[_Cloud]:
    return open_target(args, Path(DEFAULT_LOCAL_DIR))


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _group_summary(group: EnrollmentGroup) -> dict[str, Any]:
    attestation: Any
    if group.attestation_type == "symmetricKey":
        attestation = "symmetric key"
    elif group.ca_references:
        attestation = {"caReference": group.ca_references[0]}
    else:
        attestation = {"signingCertificate": [s.subject for s in group.signing_certificates]}
    return {
        "enrollmentGroupId": group.enrollment_group_id,
        "attestation": attestation,
        "provisioningStatus": group.provisioning_status,
        "allocationPolicy": group.allocation_policy or "hashed",
        "iotHubs": list(group.iot_hubs),
        "credentialPolicyName": group.credential_policy,
        "etag": group.etag,
    }


# ---- handlers ----------------------------------------------------------------------------


def cmd_create_hub(args: argparse.Namespace) -> int:
    """``dpskit cloud create-hub``."""
    with _open_cloud(args) as cloud:
        hub = cloud.create_hub(
            args.name,
            args.location,
            sku=args.sku,
            units=args.units,
            partition_count=args.partitions,
        )
        _emit(
            args,
            {
                "name": hub.name,
                "hostName": hub.host_name,
                "location": hub.location,
                "sku": hub.sku,
                "units": hub.units,
                "partitionCount": hub.partition_count,
            },
            f"hub {hub.name}: host {hub.host_name} ({hub.location}, {hub.sku} x{hub.units})",
        )
    return 0


def cmd_create_dps(args: argparse.Namespace) -> int:
    """``dpskit cloud create-dps``."""
    with _open_cloud(args) as cloud:
        dps = cloud.create_dps(args.name, args.location, presets=args.presets)
        _emit(
            args,
            {"name": dps.name, "idScope": dps.id_scope, "deviceEndpoint": dps.device_endpoint},
            f"dps {dps.name}: id scope {dps.id_scope}, devices dial {dps.device_endpoint}",
        )
    return 0


def cmd_link_hub(args: argparse.Namespace) -> int:
    """``dpskit cloud link-hub``."""
    with _open_cloud(args) as cloud:
        link = cloud.link_hub(
            args.dps,
            args.hub,
            allocation_weight=args.weight,
            apply_allocation_policy=not args.no_allocation_policy,
        )
        _emit(
            args,
            link.__dict__,
            f"linked {link.hub} ({link.host_name}) to {args.dps}, weight {link.allocation_weight}",
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``dpskit cloud show``: hubs and DPS instances with their links."""
    with _open_cloud(args) as cloud:
        hubs = [{"name": h.name, "hostName": h.host_name} for h in cloud.hubs()]
        instances = [
            {
                "name": d.name,
                "idScope": d.id_scope,
                "linkedHubs": [link.host_name for link in d.linked_hubs()],
            }
            for d in cloud.all_dps()
        ]
        data = {"hubs": hubs, "dps": instances}
        lines = [f"hub {h['name']}: {h['hostName']}" for h in hubs]
        lines += [
            f"dps {d['name']}: id scope {d['idScope']}, linked hubs {d['linkedHubs'] or 'none'}"
            for d in instances
        ]
        _emit(args, data, "\n".join(lines) or "no hubs and no DPS instances yet")
    return 0


def _dps(cloud: _Cloud, name: str) -> Dps:
    return cloud.dps(name)


def cmd_upload_ca(args: argparse.Namespace) -> int:
    """``dpskit dps upload-ca``."""
    certificate = Certificate.load(args.certificate)
    with _open_cloud(args) as cloud:
        info = _dps(cloud, args.dps).upload_ca_certificate(
            args.name, certificate, verified=args.verified
        )
        _emit(
            args,
            {"name": info.name, "thumbprint": info.thumbprint, "isVerified": info.is_verified},
            f"uploaded {info.name} ({info.subject}, thumbprint {info.thumbprint}); "
            f"verified: {info.is_verified}",
        )
    return 0


def cmd_verify_ca(args: argparse.Namespace) -> int:
    """``dpskit dps verify-ca``: proof of possession in one go (upload if needed)."""
    authority = _load_issuer(Path(args.dir), args.ca, args.key_password_env)
    with _open_cloud(args) as cloud:
        info = _dps(cloud, args.dps).prove_possession(args.name or args.ca, authority)
        _emit(
            args,
            {"name": info.name, "thumbprint": info.thumbprint, "isVerified": info.is_verified},
            f"{info.name}: verified {info.is_verified} (thumbprint {info.thumbprint})",
        )
    return 0


def cmd_group_create(args: argparse.Namespace) -> int:
    """``dpskit dps enrollment-group create``."""
    chosen = [args.ca is not None, args.certificate is not None, args.symmetric_key]
    if sum(chosen) != 1:
        raise ConfigError("give exactly one of --ca NAME, --certificate FILE, --symmetric-key")
    signing = Certificate.load(args.certificate) if args.certificate else None
    with _open_cloud(args) as cloud:
        group = _dps(cloud, args.dps).create_enrollment_group(
            args.group,
            ca_reference=args.ca,
            signing_certificate=signing,
            symmetric_key=args.symmetric_key,
            allocation_policy=args.allocation_policy,
            hubs=args.hub or None,
            provisioning_status="disabled" if args.disabled else "enabled",
            credential_policy=args.credential_policy,
        )
        summary = _group_summary(group)
        _emit(args, summary, f"enrollment group {group.enrollment_group_id}: {summary}")
    return 0


def cmd_enrollment_create(args: argparse.Namespace) -> int:
    """``dpskit dps enrollment create``."""
    if (args.certificate is not None) == args.symmetric_key:
        raise ConfigError("give exactly one of --certificate FILE, --symmetric-key")
    certificate = Certificate.load(args.certificate) if args.certificate else None
    with _open_cloud(args) as cloud:
        enrollment = _dps(cloud, args.dps).create_enrollment(
            args.registration_id,
            certificate=certificate,
            symmetric_key=args.symmetric_key,
            device_id=args.device_id,
            hubs=args.hub or None,
            credential_policy=args.credential_policy,
        )
        summary = {
            "registrationId": enrollment.registration_id,
            "attestation": enrollment.attestation_type,
            "deviceId": enrollment.device_id,
            "iotHubs": list(enrollment.iot_hubs),
            "credentialPolicyName": enrollment.credential_policy,
            "etag": enrollment.etag,
        }
        _emit(args, summary, f"enrollment {enrollment.registration_id}: {summary}")
    return 0


def cmd_group_show(args: argparse.Namespace) -> int:
    """``dpskit dps enrollment-group show``."""
    with _open_cloud(args) as cloud:
        summary = _group_summary(_dps(cloud, args.dps).enrollment_group(args.group))
        _emit(args, summary, "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    """``dpskit dps enrollment-group list``."""
    with _open_cloud(args) as cloud:
        groups = [_group_summary(g) for g in _dps(cloud, args.dps).enrollment_groups()]
        lines = [f"{g['enrollmentGroupId']}: {g['attestation']}" for g in groups]
        _emit(args, groups, "\n".join(lines) or "no enrollment groups")
    return 0


def cmd_group_delete(args: argparse.Namespace) -> int:
    """``dpskit dps enrollment-group delete``."""
    with _open_cloud(args) as cloud:
        _dps(cloud, args.dps).delete_enrollment_group(args.group)
        _emit(args, {"deleted": args.group}, f"deleted enrollment group {args.group}")
    return 0


def cmd_registrations(args: argparse.Namespace) -> int:
    """``dpskit dps registrations``."""
    with _open_cloud(args) as cloud:
        records = _dps(cloud, args.dps).registrations(args.group)
        data = [
            {
                "registrationId": r.registration_id,
                "status": r.status,
                "assignedHub": r.assigned_hub,
                "deviceId": r.device_id,
                "enrollmentGroupId": r.enrollment_group_id,
                "lastUpdated": r.last_updated.isoformat(),
            }
            for r in records
        ]
        lines = [f"{r['registrationId']}: {r['status']} → {r['assignedHub']}" for r in data]
        _emit(args, data, "\n".join(lines) or "no registrations")
    return 0


# ---- parser --------------------------------------------------------------------------------


def add_cloud_commands(commands: Any) -> None:
    """Adds ``cloud`` and ``dps`` to the top-level subcommands."""
    target = _target_options()

    cloud = commands.add_parser(
        "cloud", help="create hubs and DPS instances and link them (local or Azure)"
    )
    sub = cloud.add_subparsers(title="commands", metavar="COMMAND")
    cloud.set_defaults(handler=None, parser=cloud)
    p = sub.add_parser("create-hub", parents=[target], help="create an IoT hub")
    p.add_argument("name", help="3-50 letters, digits and hyphens, not ending with a hyphen")
    p.add_argument("--location", default="westeurope")
    p.add_argument(
        "--sku",
        choices=["F1", "B1", "B2", "B3", "S1", "S2", "S3"],
        help="tier; the local cloud then applies its documented throttles and daily quota",
    )
    p.add_argument("--units", type=int, default=1, help="units of the tier (with --sku)")
    p.add_argument(
        "--partitions",
        type=int,
        help="partitions of its Event Hub-compatible endpoint, 2-128 (default 4), fixed once made",
    )
    p.set_defaults(handler=cmd_create_hub, parser=p)
    p = sub.add_parser("create-dps", parents=[target], help="create a DPS instance")
    p.add_argument("name", help="3-64 letters, digits and hyphens, not ending with a hyphen")
    p.add_argument("--location", default="westeurope")
    p.add_argument(
        "--presets",
        action="store_true",
        help="the local cloud applies Azure's DPS rates (registrations, polls, operations)",
    )
    p.set_defaults(handler=cmd_create_dps, parser=p)
    p = sub.add_parser("link-hub", parents=[target], help="link a hub to a DPS instance")
    p.add_argument("dps")
    p.add_argument("hub")
    p.add_argument("--weight", type=int, default=1, help="allocation weight (hashed policy)")
    p.add_argument(
        "--no-allocation-policy",
        action="store_true",
        help="keep the hub out of the DPS-wide allocation",
    )
    p.set_defaults(handler=cmd_link_hub, parser=p)
    p = sub.add_parser("show", parents=[target], help="list hubs and DPS instances")
    p.set_defaults(handler=cmd_show, parser=p)

    dps = commands.add_parser(
        "dps", help="CA certificates, proof of possession, enrollment groups, registrations"
    )
    sub = dps.add_subparsers(title="commands", metavar="COMMAND")
    dps.set_defaults(handler=None, parser=dps)
    p = sub.add_parser("upload-ca", parents=[target], help="upload a CA certificate")
    p.add_argument("dps")
    p.add_argument("name", help="certificate name in the DPS")
    p.add_argument("certificate", help="PEM or DER file")
    p.add_argument("--verified", action="store_true", help="mark it verified (skips PoP)")
    p.set_defaults(handler=cmd_upload_ca, parser=p)
    p = sub.add_parser(
        "verify-ca",
        parents=[target],
        help="proof of possession in one go: upload, code, sign, verify",
        description="Prove you hold a CA's key: uploads DIR/CA.cert.pem if needed, asks for a "
        "verification code, signs a verification certificate with DIR/CA.key.pem, verifies.",
        formatter_class=_Formatter,
    )
    p.add_argument("dps")
    p.add_argument("--ca", default="root", help="CA files DIR/CA.cert.pem and DIR/CA.key.pem")
    p.add_argument("--dir", default="certs", help="folder of the CA files")
    p.add_argument("--name", help="certificate name in the DPS (default: --ca)")
    p.add_argument("--key-password-env", metavar="VAR", help="variable holding the key password")
    p.set_defaults(handler=cmd_verify_ca, parser=p)

    groups = sub.add_parser("enrollment-group", help="create, show, list, delete groups")
    gsub = groups.add_subparsers(title="commands", metavar="COMMAND")
    groups.set_defaults(handler=None, parser=groups)
    p = gsub.add_parser("create", parents=[target], help="create (or replace) a group")
    p.add_argument("dps")
    p.add_argument("group")
    p.add_argument("--ca", metavar="NAME", help="an uploaded, verified CA certificate")
    p.add_argument("--certificate", metavar="FILE", help="the signing CA certificate itself")
    p.add_argument("--symmetric-key", action="store_true", help="a symmetric-key group")
    p.add_argument(
        "--allocation-policy", choices=["hashed", "static", "geoLatency", "custom"], default=None
    )
    p.add_argument("--hub", action="append", metavar="HOST", help="allowed hub (repeatable)")
    p.add_argument("--disabled", action="store_true", help="create it disabled")
    p.add_argument(
        "--credential-policy",
        metavar="NAME",
        help="Device Registry policy issuing the devices' certificates (DPS linked to a namespace)",
    )
    p.set_defaults(handler=cmd_group_create, parser=p)
    for name, handler, help_text in (
        ("show", cmd_group_show, "show a group"),
        ("delete", cmd_group_delete, "delete a group"),
    ):
        p = gsub.add_parser(name, parents=[target], help=help_text)
        p.add_argument("dps")
        p.add_argument("group")
        p.set_defaults(handler=handler, parser=p)
    p = gsub.add_parser("list", parents=[target], help="list the groups")
    p.add_argument("dps")
    p.set_defaults(handler=cmd_group_list, parser=p)
    enrollments = sub.add_parser("enrollment", help="create individual enrollments")
    esub = enrollments.add_subparsers(title="commands", metavar="COMMAND")
    enrollments.set_defaults(handler=None, parser=enrollments)
    p = esub.add_parser("create", parents=[target], help="create (or replace) an enrollment")
    p.add_argument("dps")
    p.add_argument("registration_id")
    p.add_argument("--certificate", metavar="FILE", help="the device's certificate")
    p.add_argument("--symmetric-key", action="store_true", help="a symmetric-key enrollment")
    p.add_argument("--device-id", help="the device id in the hub (default: the registration id)")
    p.add_argument("--hub", action="append", metavar="HOST", help="allowed hub (repeatable)")
    p.add_argument(
        "--credential-policy",
        metavar="NAME",
        help="Device Registry policy issuing the device's certificate (DPS linked to a namespace)",
    )
    p.set_defaults(handler=cmd_enrollment_create, parser=p)
    p = sub.add_parser("registrations", parents=[target], help="registration records")
    p.add_argument("dps")
    p.add_argument("group", nargs="?", help="only this group's (default: all)")
    p.set_defaults(handler=cmd_registrations, parser=p)
