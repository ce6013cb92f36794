"""``dpskit fleet``: a fleet of simulated devices through DPS, from the command line."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dpskit._native import CertificateAuthority
from dpskit.cli.argtypes import non_negative_float, positive_int
from dpskit.cli.files import _files
from dpskit.cli.targets import add_azure_options, open_target
from dpskit.cloud import Dps, EnrollmentGroup
from dpskit.errors import ConfigError, NotFoundError
from dpskit.fleet import Fleet, FleetReport, TelemetryPlan
from dpskit.signals import Signal, choice, gaussian, random_walk, sine

__all__ = ["add_fleet_commands"]

DEFAULT_FLEET_DIR = "dpskit-fleet"
FLEET_DPS = "fleet-dps"
X509_GROUP = "fleet-devices"
KEY_GROUP = "fleet-keys"


def default_fields() -> dict[str, Signal]:
    """A plausible environmental sensor: a daily temperature cycle with noise and rare spikes,
    drifting humidity, and a mostly-ok status."""
    return {
        "temperature": (sine(mean=21.0, amplitude=3.0, period=86_400) + gaussian(0.0, 0.2))
        .with_anomalies(rate=0.001, scale=12.0)
        .rounded(2),
        "humidity": random_walk(start=45.0, step=0.4, low=0.0, high=100.0).rounded(1),
        "status": choice(["ok", "degraded", "fault"], weights=[0.97, 0.025, 0.005]),
    }


def _authority(certs: Path) -> CertificateAuthority:
    """The fleet's intermediate CA: loaded from CERTS, or created there (with its root) once,
    so reruns and other shards reuse the same identities."""
    files = _files(certs, "intermediate")
    cert, key = files["certificate"], files["private_key"]
    if cert.exists() and key.exists():
        return CertificateAuthority.load(cert, key)
    root = CertificateAuthority.create_root("dpskit Fleet Root CA")
    root.save(certs, name="root")
    intermediate = root.create_intermediate("dpskit Fleet Intermediate CA")
    intermediate.save(certs, name="intermediate")
    return intermediate


def _group(dps: Dps, group_id: str, create: dict[str, object]) -> EnrollmentGroup:
    """The existing group (a second shard must not regenerate keys), else a new one."""
    try:
        return dps.enrollment_group(group_id)
    except NotFoundError:
        return dps.create_enrollment_group(group_id, **create)  # type: ignore[arg-type]


def cmd_fleet(args: argparse.Namespace) -> int:
    """Set up (or reuse) hubs, DPS, CA and enrollment group, then run the fleet."""
    base = Path(args.dir)
    if args.out and Path(args.out).suffix.lower() not in {".csv", ".parquet"}:
        raise ConfigError(f"--out must name a .csv or .parquet file, not {args.out!r}")
    interval = 0.0 if args.rate == 0 else 1.0 / args.rate
    plan = TelemetryPlan(
        interval=interval,
        duration=None if args.messages else args.duration,
        count=args.messages,
        fields=default_fields(),
        seed=args.seed,
    )
    # The local cloud's default pacing (no wait between polls): limited by the machine.
    with open_target(args, base / "cloud") as cloud:
        hubs = [cloud.create_hub(f"fleet-hub-{n}") for n in range(1, args.hubs + 1)]
        dps = cloud.create_dps(FLEET_DPS)
        linked = {link.hub for link in dps.linked_hubs()}
        for hub in hubs:
            if hub.name not in linked:
                cloud.link_hub(dps, hub)
        authority = None
        group_key = None
        if args.symmetric_key:
            group_key = _group(
                dps,
                KEY_GROUP,
                {"symmetric_key": True, "allocation_policy": "hashed", "hubs": hubs},
            )
        else:
            authority = _authority(base / "certs")
            dps.prove_possession("fleet-intermediate", authority)
            _group(
                dps,
                X509_GROUP,
                {
                    "ca_reference": "fleet-intermediate",
                    "allocation_policy": "hashed",
                    "hubs": hubs,
                },
            )
        fleet = Fleet(
            dps,
            count=args.devices,
            authority=authority,
            group_key=group_key,
            prefix=args.prefix,
            telemetry=plan,
            concurrency=args.concurrency,
            certificates_dir=base / "certs" / "devices" if authority is not None else None,
            shard=args.shard,
            pace_like_azure=args.pace_like_azure,
            time_compression=args.time_compression,
        )
        where = "Azure" if args.azure else f"the local cloud ({cloud})"
        shard = f", shard {fleet.shard[0]}/{fleet.shard[1]}" if fleet.shard else ""
        print(
            f"dpskit fleet: {len(fleet.indexes):,} of {args.devices:,} devices{shard} through "
            f"{dps.name} on {where}",
            file=sys.stderr,
        )
        show = None if args.progress else False
        if args.workers:
            # Spawned, not forked: a forked child inherits this process's runtimes (the local
            # cloud's among them) without their threads.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                report = fleet.run(progress=show, executor=pool)
        else:
            report = fleet.run(progress=show)
    print(report.summary())
    if args.out:
        for path in report.save(args.out):
            print(f"wrote {path}")
    return 0 if report.completed == report.device_count else 1


def _no_nan(percentiles: dict[str, float]) -> dict[str, float | None]:
    # NaN (no values, e.g. no messages recorded) is not JSON: null is.
    return {k: None if math.isnan(v) else v for k, v in percentiles.items()}


def _summary_json(report: FleetReport) -> dict[str, object]:
    """The merged run's figures for ``--json``."""
    return {
        "devices": report.device_count,
        "completed": report.completed,
        "outcomes": report.outcomes,
        "error_codes": report.error_codes,
        "provisioned": report.provisioned,
        "devices_per_hub": report.devices_per_hub,
        "messages_sent": report.messages_sent,
        "messages_acknowledged": report.messages_acknowledged,
        "retries": report.retries,
        "started_at": report.started_at.isoformat(),
        "elapsed": report.elapsed,
        "connect_phase": report.connect_phase,
        "provisioning_rate": report.provisioning_rate,
        "provisioning_latency_ms": _no_nan(report.provisioning_latency_ms),
        "connect_latency_ms": _no_nan(report.connect_latency_ms),
        "ack_latency_ms": _no_nan(report.ack_latency_ms),
    }


def cmd_fleet_merge(args: argparse.Namespace) -> int:
    """Merge the shards' saved results into one report (refusing foreign, missing and
    duplicated shards), print it and, with --out, write it."""
    if args.out and Path(args.out).suffix.lower() not in {".csv", ".parquet"}:
        raise ConfigError(f"--out must name a .csv or .parquet file, not {args.out!r}")
    report = FleetReport.load(*args.results)
    if args.json:
        print(json.dumps(_summary_json(report), indent=2))
    else:
        print(report.summary())
    if args.out:
        for path in report.save(args.out):
            print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def add_fleet_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dpskit fleet``."""
    p = commands.add_parser(
        "fleet",
        help="provision a fleet of simulated devices through DPS and stream telemetry",
        description="Create (or reuse) hubs, a DPS instance, a CA and an enrollment group, then\n"
        "provision N distinct devices through DPS, connect each to its hub and send telemetry\n"
        "(temperature, humidity, status) for DURATION seconds at RATE messages/s per device.\n"
        "Prints a summary; --out writes per-device and per-message results.\n\n"
        "Against the local cloud by default (DIR/cloud, or --local for a running emulator);\n"
        "--azure targets real Azure (charges apply). --shard i/n splits the devices over\n"
        "machines that share DIR/certs; --shard auto reads i and n from a Kubernetes Indexed\n"
        "Job (JOB_COMPLETION_INDEX, JOB_COMPLETIONS set in the manifest), a Slurm job array or\n"
        "Azure Batch (DPSKIT_SHARD_INDEX, DPSKIT_SHARD_COUNT). `dpskit fleet merge` combines\n"
        "the shards' --out results into one report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=positive_int, default=100, help="devices in the fleet")
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=1.0,
        help="messages per second per device (0: flat out)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of telemetry")
    p.add_argument(
        "--messages", type=positive_int, help="messages per device instead of a duration"
    )
    p.add_argument("--hubs", type=positive_int, default=2, help="hubs to spread devices over")
    p.add_argument("--prefix", default="sensor-", help="registration id prefix")
    p.add_argument("--symmetric-key", action="store_true", help="symmetric-key group, no X.509")
    p.add_argument("--concurrency", type=positive_int, default=64, help="registrations at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the telemetry values")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run the I-th of N slices of the devices ('auto': from the scheduler)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="split the fleet over N local worker processes (one report); not with --shard",
    )
    p.add_argument(
        "--pace-like-azure",
        action="store_true",
        help="local cloud: apply Azure's 1,000 registrations/min quota",
    )
    p.add_argument(
        "--time-compression",
        type=float,
        default=1.0,
        help="with --pace-like-azure: run the quota this many times faster",
    )
    p.add_argument("--out", metavar="FILE", help="results as .csv or .parquet")
    p.add_argument("--dir", default=DEFAULT_FLEET_DIR, help="certificates and local state")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no live line")
    p.add_argument("--local", metavar="DIR", help="a running `dpskit emulator`'s folder")
    p.add_argument("--azure", action="store_true", help="run against Azure")
    add_azure_options(p)
    p.set_defaults(handler=cmd_fleet, parser=p)
    # Optional, so `dpskit fleet --devices N` keeps running a fleet.
    sub = p.add_subparsers(title="commands", metavar="COMMAND", required=False)
    merge = sub.add_parser(
        "merge",
        help="combine shards' saved results into one report",
        description="Read fleet results saved with --out (or FleetReport.save): folders (every\n"
        "result in them) or files. Prints one report as if one process had run the fleet;\n"
        "--out writes it. Refuses shards of different runs, a missing shard, a shard given\n"
        "twice and shards that disagree on the count (exit status 1).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("results", nargs="+", metavar="DIR|FILE", help="results or folders")
    merge.add_argument("--out", metavar="FILE", help="write the merged results (.csv, .parquet)")
    merge.add_argument("--json", action="store_true", help="print JSON instead of text")
    merge.set_defaults(handler=cmd_fleet_merge, parser=merge)
