"""Where a command acts: a local cloud's state folder (the running ``dpskit emulator`` on it,
or one started for the command) or Azure (``--azure``; subscription and resource group from
options or ``AZURE_SUBSCRIPTION_ID`` / ``AZURE_RESOURCE_GROUP``, credential from the
environment or ``az login``). Shared by ``cloud``, ``dps``, ``fleet`` and ``demo``."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dpskit.cloud import AzureCloud, LocalCloud
from dpskit.cloud.base import _Cloud
from dpskit.errors import ConfigError

#: The local cloud's state folder when a command names none (``dpskit emulator``'s too).
DEFAULT_LOCAL_DIR = "dpskit-cloud"


def add_azure_options(where: argparse._ActionsContainer) -> None:
    """The options that reach real Azure (shared by every command with ``--azure``)."""
    where.add_argument("--subscription", help="Azure subscription id (or AZURE_SUBSCRIPTION_ID)")
    where.add_argument("--resource-group", help="Azure resource group (or AZURE_RESOURCE_GROUP)")
    where.add_argument(
        "--token-env",
        metavar="VAR",
        help="variable holding an ARM bearer token (default: a service principal from "
        "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, else `az login`)",
    )
    where.add_argument(
        "--cloud",
        metavar="NAME",
        help="Azure cloud: AzureCloud (default), AzureChinaCloud or AzureUSGovernment; sets the "
        "Resource Manager endpoint, the token scope and the sign-in authority together",
    )
    where.add_argument(
        "--arm-endpoint",
        default=None,
        help="Resource Manager endpoint (default: the cloud's; or an emulator's)",
    )
    where.add_argument(
        "--trust-file",
        metavar="PEM",
        help="CA the endpoints' certificates chain to, instead of the system roots",
    )


def azure_cloud(args: argparse.Namespace) -> AzureCloud:
    """An :class:`AzureCloud` from the options :func:`add_azure_options` added."""
    subscription = args.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
    group = args.resource_group or os.environ.get("AZURE_RESOURCE_GROUP")
    if not subscription or not group:
        raise ConfigError(
            "--azure needs --subscription and --resource-group "
            "(or AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP)"
        )
    credential = None
    if args.token_env:
        credential = os.environ.get(args.token_env)
        if not credential:
            raise ConfigError(f"--token-env {args.token_env}: that variable is not set")
    trust = Path(args.trust_file).read_text() if args.trust_file else None
    return AzureCloud(
        subscription,
        group,
        credential,
        cloud=args.cloud or os.environ.get("AZURE_CLOUD") or None,
        arm_endpoint=args.arm_endpoint,
        trust_pem=trust,
    )


def _target_options() -> argparse.ArgumentParser:
    """Where the command acts: a local cloud's folder, or Azure."""
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_argument_group("target")
    where.add_argument(
        "--local",
        metavar="DIR",
        default=None,
        help=f"local cloud state folder (default {DEFAULT_LOCAL_DIR}); a running "
        "`dpskit emulator` on it is used, otherwise one is started for the command",
    )
    where.add_argument("--azure", action="store_true", help="act on Azure instead")
    add_azure_options(where)
    where.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parent


@contextlib.contextmanager
def open_target(
    args: argparse.Namespace, default_local: Path, *, poll_retry_after: int = 0
) -> Iterator[_Cloud]:
    """The cloud a command acts on: Azure with ``--azure``; else the running ``dpskit
    emulator`` on ``--local`` (or ``default_local``), or one started there for the command on
    free ports (``poll_retry_after`` as :class:`LocalCloud`'s)."""
    if args.azure:
        if args.local:
            raise ConfigError("choose --local or --azure, not both")
        yield azure_cloud(args)
        return
    folder = Path(args.local) if args.local else default_local
    running = LocalCloud.attach(folder)
    if running is not None:
        yield running
        return
    with LocalCloud(folder, port=0, poll_retry_after=poll_retry_after) as cloud:
        yield cloud
