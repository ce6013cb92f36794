"""``dpskit device provision`` and ``dpskit device run``: a simulated device from the shell,
against a local cloud (``--local DIR``: the running ``dpskit emulator`` on it) or Azure
(``--id-scope``, and ``--endpoint`` or ``--cloud`` for the DPS host; the system's trust
roots)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from dpskit._native import DeviceCertificate
from dpskit.cli.files import _files
from dpskit.cli.targets import DEFAULT_LOCAL_DIR
from dpskit.cloud import LocalCloud
from dpskit.credentials import AZURE_CLOUDS, azure_environment
from dpskit.device import AZURE_GLOBAL_ENDPOINT, HubClient, RegistrationResult, provision
from dpskit.errors import ConfigError

__all__ = ["add_device_commands"]


def _credentials(args: argparse.Namespace) -> DeviceCertificate:
    folder = Path(args.certs)
    files = _files(folder, args.registration_id)
    chain = files["chain"]
    cert = chain if chain.exists() else files["certificate"]
    key = files["private_key"]
    if not cert.exists() or not key.exists():
        raise ConfigError(
            f"no certificate for {args.registration_id} in {folder} (make one with "
            f"'dpskit certs device {args.registration_id}')"
        )
    return DeviceCertificate.load(cert, key)


def _target(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(endpoint, id scope, trust PEM) from the options."""
    if args.id_scope:
        if args.endpoint:
            return args.endpoint, args.id_scope, None
        cloud = args.cloud or os.environ.get("AZURE_CLOUD") or "AzureCloud"
        environment = azure_environment(cloud) or AZURE_CLOUDS["AzureCloud"]
        return environment.dps_global_endpoint, args.id_scope, None
    folder = Path(args.local)
    cloud = LocalCloud.attach(folder)
    if cloud is None:
        raise ConfigError(
            f"no local cloud runs on {folder}: start one with 'dpskit emulator --data-dir "
            f"{folder}', or give --id-scope (and --endpoint) for Azure"
        )
    dps = cloud.dps(args.dps) if args.dps else next(iter(cloud.all_dps()), None)
    if dps is None:
        raise ConfigError(f"the local cloud on {folder} has no DPS instance yet")
    endpoint = dps.websocket_endpoint if args.websockets else dps.device_endpoint
    return endpoint, dps.id_scope, cloud.trust_pem


async def _provision(
    args: argparse.Namespace,
) -> tuple[RegistrationResult, DeviceCertificate, str | None]:
    device = _credentials(args)
    endpoint, id_scope, trust = _target(args)
    result = await provision(
        endpoint,
        id_scope=id_scope,
        certificate=device,
        trust=trust,
        transport="websockets" if args.websockets else "mqtt",
        proxy=args.proxy,
        csr=args.csr,
        key_algorithm=args.key_algorithm,
    )
    if result.issued_certificate is not None:
        # The operational certificate replaces the onboarding one for the hub.
        return result, result.issued_certificate, trust
    return result, device, trust


def _save_issued(result: RegistrationResult, folder: Path) -> dict[str, Path]:
    """Writes the certificate DPS issued (key owner-only, chain, full chain, PKCS#12) like
    every other device's files, named by its registration id."""
    if result.issued_certificate is None:
        return {}
    return result.issued_certificate.save(folder, name=result.registration_id)


def _print_result(
    result: RegistrationResult, as_json: bool, saved: dict[str, Path] | None = None
) -> None:
    data: dict[str, Any] = {
        "status": result.status,
        "registrationId": result.registration_id,
        "assignedHub": result.assigned_hub,
        "deviceId": result.device_id,
        "substatus": result.substatus,
    }
    issued = result.issued_certificate
    if issued is not None:
        data["issuedCertificate"] = {
            "subject": issued.certificate.subject,
            "issuer": issued.certificate.issuer,
            "notAfter": issued.certificate.not_after.isoformat(),
            "thumbprint": issued.certificate.thumbprint_sha1,
            "files": {kind: str(path) for kind, path in (saved or {}).items()},
        }
    if as_json:
        print(json.dumps(data))
        return
    where = f"{result.assigned_hub} as {result.device_id}"
    print(f"{result.registration_id}: {result.status} → {where}")
    if issued is not None:
        print(
            f"issued {issued.certificate.subject} by {issued.certificate.issuer}, valid until "
            f"{issued.certificate.not_after:%Y-%m-%d %H:%M} UTC"
        )
        for kind, path in (saved or {}).items():
            print(f"  {kind}: {path}")


def cmd_provision(args: argparse.Namespace) -> int:
    """``dpskit device provision``."""
    result, _, _ = asyncio.run(_provision(args))
    saved = _save_issued(result, Path(args.issued_dir))
    _print_result(result, args.json, saved)
    return 0


async def _run(args: argparse.Namespace) -> int:
    result, device, trust = await _provision(args)
    _print_result(result, args.json)
    async with HubClient.connect(result, certificate=device, trust=trust) as client:

        async def answer_methods() -> None:
            async for request in client.method_requests():
                print(f"method {request.name}({json.dumps(request.payload)})", flush=True)
                await request.respond(200, {"ok": True, "method": request.name})

        async def print_messages() -> None:
            async for message in client.messages():
                print(
                    f"c2d {message.body.decode(errors='replace')} {message.properties}", flush=True
                )

        listeners = [asyncio.create_task(answer_methods()), asyncio.create_task(print_messages())]
        try:
            start = time.monotonic()
            sent = 0
            while args.count == 0 or sent < args.count:
                reading: dict[str, Any] = {
                    "temperature": round(20 + 5 * math.sin(sent / 10) + random.gauss(0, 0.3), 2),
                    "sequence": sent,
                }
                await client.send_telemetry(reading, {"source": "dpskit"})
                sent += 1
                print(f"sent {json.dumps(reading)}", flush=True)
                if args.duration and time.monotonic() - start >= args.duration:
                    break
                await asyncio.sleep(args.interval)
        finally:
            for task in listeners:
                task.cancel()
    print(f"{sent} messages acknowledged by {result.assigned_hub}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``dpskit device run``."""
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


def add_device_commands(commands: Any) -> None:
    """Adds ``device`` to the top-level subcommands."""
    device = commands.add_parser("device", help="a simulated device: provision, then run it")
    sub = device.add_subparsers(title="commands", metavar="COMMAND")
    device.set_defaults(handler=None, parser=device)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("registration_id", help="the device's registration id (= certificate CN)")
    common.add_argument(
        "--certs",
        default="certs/devices",
        help="folder of ID.chain.pem (or ID.cert.pem) and ID.key.pem",
    )
    common.add_argument(
        "--local", default=DEFAULT_LOCAL_DIR, metavar="DIR", help="local cloud folder (default)"
    )
    common.add_argument("--dps", help="DPS instance of the local cloud (default: the first)")
    common.add_argument("--id-scope", help="Azure: the DPS ID scope (switches to Azure)")
    common.add_argument(
        "--endpoint",
        help=f"Azure: DPS endpoint (default: the cloud's; {AZURE_GLOBAL_ENDPOINT} when public)",
    )
    common.add_argument(
        "--cloud",
        metavar="NAME",
        help="Azure: AzureCloud (default), AzureChinaCloud or AzureUSGovernment (the DPS endpoint)",
    )
    common.add_argument(
        "--websockets",
        action="store_true",
        help="MQTT over WebSockets on port 443 (the local cloud's web port), for networks "
        "that let only HTTPS out",
    )
    common.add_argument(
        "--proxy",
        metavar="URL",
        help="tunnel through an HTTP proxy: http://[user:password@]host:port",
    )
    common.add_argument(
        "--csr",
        action="store_true",
        help="ask DPS for an operational certificate (a new key and CSR; the enrollment needs "
        "a certificate policy); the device then connects to its hub with it",
    )
    common.add_argument(
        "--key-algorithm",
        default="ec-p256",
        metavar="ALG",
        help="with --csr: the new key's algorithm (ec-p256, ec-p384, rsa-2048)",
    )
    common.add_argument(
        "--issued-dir",
        default="certs/issued",
        metavar="DIR",
        help="with --csr: where 'provision' writes the issued certificate, key and chain",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("provision", parents=[common], help="register with DPS, print the result")
    p.set_defaults(handler=cmd_provision, parser=p)
    p = sub.add_parser(
        "run",
        parents=[common],
        help="provision, connect, send telemetry, answer methods, print C2D",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    p.add_argument("--count", type=int, default=10, help="messages to send (0: until Ctrl-C)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.set_defaults(handler=cmd_run, parser=p)
