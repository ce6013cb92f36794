"""``dpskit registry``: Azure Device Registry from a shell: namespaces (with their root CA),
credential policies (with their issuing CA and the validity of what they issue), and the links
that let a DPS issue through them and a hub trust them, on the target
:mod:`dpskit.cli.targets` opens."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from dpskit.cli.targets import DEFAULT_LOCAL_DIR, _target_options, open_target
from dpskit.cloud.base import _Cloud
from dpskit.cloud.registry import DEFAULT_VALIDITY_DAYS
from dpskit.errors import ConfigError


def _open_cloud(args: argparse.Namespace) -> contextlib.AbstractContextManager[_Cloud]:
    return open_target(args, Path(DEFAULT_LOCAL_DIR))


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_namespace_create(args: argparse.Namespace) -> int:
    """``dpskit registry namespace create``."""
    with _open_cloud(args) as cloud:
        namespace = cloud.create_device_registry_namespace(args.name, args.location)
        data = {
            "name": namespace.name,
            "location": namespace.location,
            "id": namespace.resource_id,
            "rootCa": namespace.root_ca.pem if namespace.root_ca else None,
        }
        _emit(args, data, f"namespace {namespace.name} ({namespace.resource_id})")
    return 0


def cmd_policy_create(args: argparse.Namespace) -> int:
    """``dpskit registry policy create``."""
    with _open_cloud(args) as cloud:
        namespace = cloud.device_registry_namespace(args.namespace)
        policy = namespace.create_policy(args.name, validity_days=args.validity_days)
        data = {
            "namespace": policy.namespace,
            "name": policy.name,
            "validityDays": policy.validity_days,
            "issuingCa": policy.issuing_ca.pem if policy.issuing_ca else None,
        }
        _emit(
            args,
            data,
            f"policy {policy.name} of {policy.namespace}: issues certificates valid "
            f"{policy.validity_days} days ({policy.subject})",
        )
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    """``dpskit registry link``."""
    if (args.dps is None) == (args.hub is None):
        raise ConfigError("give exactly one of --dps NAME, --hub NAME")
    with _open_cloud(args) as cloud:
        target = cloud.dps(args.dps) if args.dps else cloud.hub(args.hub)
        cloud.link_namespace(target, args.namespace)
        what = f"DPS {args.dps}" if args.dps else f"hub {args.hub}"
        _emit(
            args,
            {"namespace": args.namespace, "dps": args.dps, "hub": args.hub},
            f"linked {what} to namespace {args.namespace}",
        )
    return 0


def add_registry_commands(commands: Any) -> None:
    """Adds ``registry`` to the top-level subcommands."""
    target = _target_options()
    registry = commands.add_parser(
        "registry", help="Azure Device Registry: namespaces, credential policies, links"
    )
    sub = registry.add_subparsers(title="commands", metavar="COMMAND")
    registry.set_defaults(handler=None, parser=registry)

    namespaces = sub.add_parser("namespace", help="create namespaces")
    nsub = namespaces.add_subparsers(title="commands", metavar="COMMAND")
    namespaces.set_defaults(handler=None, parser=namespaces)
    p = nsub.add_parser("create", parents=[target], help="create a namespace and its root CA")
    p.add_argument("name", help="3-64 lower-case letters, digits and hyphens")
    p.add_argument("--location", default="westeurope")
    p.set_defaults(handler=cmd_namespace_create, parser=p)

    policies = sub.add_parser("policy", help="create credential policies")
    psub = policies.add_subparsers(title="commands", metavar="COMMAND")
    policies.set_defaults(handler=None, parser=policies)
    p = psub.add_parser("create", parents=[target], help="create a policy and its issuing CA")
    p.add_argument("namespace")
    p.add_argument("name", help="3-63 letters, digits and hyphens")
    p.add_argument(
        "--validity-days",
        type=int,
        default=DEFAULT_VALIDITY_DAYS,
        help="days an issued device certificate is valid, 7-90",
    )
    p.set_defaults(handler=cmd_policy_create, parser=p)

    p = sub.add_parser("link", parents=[target], help="link a DPS or a hub to a namespace")
    p.add_argument("namespace")
    p.add_argument("--dps", metavar="NAME", help="the DPS then issues through its policies")
    p.add_argument("--hub", metavar="NAME", help="the hub then trusts its issuing CAs")
    p.set_defaults(handler=cmd_link, parser=p)
