"""``dpskit fleet``: a fleet of simulated devices through DPS, from the command line; its
shards' set-up done once (``prepare``, then ``--no-setup``), a Kubernetes Indexed Job that runs
them (``kubernetes``) and their results combined (``merge``)."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import re
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dpskit._native import Certificate, CertificateAuthority
from dpskit.cli.argtypes import non_negative_float, non_negative_int, positive_int
from dpskit.cli.files import _files
from dpskit.cli.targets import add_azure_options, open_target
from dpskit.cloud import Dps, EnrollmentGroup, Hub
from dpskit.cloud.base import _Cloud
from dpskit.deploy import render_fleet_job
from dpskit.errors import ConfigError, NotFoundError
from dpskit.fleet import Fleet, FleetReport, TelemetryPlan
from dpskit.fleet_executor import missing_certificates
from dpskit.signals import Signal, choice, gaussian, random_walk, sine

__all__ = ["add_fleet_commands"]

DEFAULT_FLEET_DIR = "dpskit-fleet"
FLEET_DPS = "fleet-dps"
X509_GROUP = "fleet-devices"
KEY_GROUP = "fleet-keys"
#: The name of the fleet's intermediate CA on the DPS.
FLEET_CA = "fleet-intermediate"


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


def _set_up(
    args: argparse.Namespace, cloud: _Cloud, base: Path
) -> tuple[Dps, list[Hub], CertificateAuthority | None, EnrollmentGroup | None]:
    """Create (or reuse) the hubs, the DPS and its links, and the enrollment group: with
    X.509, the CA in ``base``/certs and its proof of possession too."""
    hubs = [cloud.create_hub(f"fleet-hub-{n}") for n in range(1, args.hubs + 1)]
    dps = cloud.create_dps(FLEET_DPS)
    linked = {link.hub for link in dps.linked_hubs()}
    for hub in hubs:
        if hub.name not in linked:
            cloud.link_hub(dps, hub)
    if args.symmetric_key:
        group = _group(
            dps,
            KEY_GROUP,
            {"symmetric_key": True, "allocation_policy": "hashed", "hubs": hubs},
        )
        return dps, hubs, None, group
    authority = _authority(base / "certs")
    dps.prove_possession(FLEET_CA, authority)
    _group(
        dps,
        X509_GROUP,
        {"ca_reference": FLEET_CA, "allocation_policy": "hashed", "hubs": hubs},
    )
    return dps, hubs, authority, None


def _prepared(
    args: argparse.Namespace, cloud: _Cloud, base: Path
) -> tuple[Dps, CertificateAuthority | None, EnrollmentGroup | None]:
    """What ``dpskit fleet prepare`` made, read and never created (``--no-setup``): shards
    started together must not each create a CA or the resources. Raises ConfigError naming
    what is missing, or a CA on the DPS that is not the one in ``base``/certs."""
    hint = "run `dpskit fleet prepare` once, with the same --dir and target, first"
    try:
        dps = cloud.dps(FLEET_DPS)
    except NotFoundError:
        raise ConfigError(f"--no-setup: there is no DPS {FLEET_DPS!r} yet; {hint}") from None
    group_id = KEY_GROUP if args.symmetric_key else X509_GROUP
    try:
        group = dps.enrollment_group(group_id)
    except NotFoundError:
        raise ConfigError(
            f"--no-setup: DPS {FLEET_DPS!r} has no enrollment group {group_id!r}; {hint}"
        ) from None
    if args.symmetric_key:
        return dps, None, group
    # Only the CA's certificate: the shards run on certificates prepare issued, so the CA's
    # key stays on the machine that prepared them.
    cert = _files(base / "certs", "intermediate")["certificate"]
    if not cert.exists():
        raise ConfigError(f"--no-setup: no fleet CA certificate in {base / 'certs'}; {hint}")
    authority = Certificate.load(cert)
    try:
        uploaded = dps.ca_certificate(FLEET_CA)
    except NotFoundError:
        raise ConfigError(f"--no-setup: DPS {FLEET_DPS!r} has no CA {FLEET_CA!r}; {hint}") from None
    # Two set-ups racing could each have made a CA: the DPS trusts only the one it verified.
    thumbprint = authority.thumbprint_sha1
    if not uploaded.is_verified or uploaded.thumbprint.upper() != thumbprint.upper():
        raise ConfigError(
            f"--no-setup: the CA in {base / 'certs'} ({thumbprint}) is not the verified CA "
            f"{FLEET_CA!r} of DPS {FLEET_DPS!r} ({uploaded.thumbprint}, "
            f"{'verified' if uploaded.is_verified else 'not verified'}); {hint}"
        )
    return dps, None, None


def _missing_certificates(fleet: Fleet) -> None:
    """Refuse a shard whose device certificates ``dpskit fleet prepare`` did not issue: with
    --no-setup nothing is written to the fleet folder (pods mount it read-only)."""
    folder = fleet.certificates_dir
    if folder is None:
        return
    missing = missing_certificates(folder, fleet.registration_ids)
    if missing:
        raise ConfigError(
            f"--no-setup: {len(missing):,} of this shard's {len(fleet.indexes):,} device "
            f"certificates are not in {folder} (first: {missing[0]}); run `dpskit fleet "
            f"prepare --devices {fleet.count}` with the same --prefix first"
        )


def _telemetry(args: argparse.Namespace) -> TelemetryPlan:
    """The telemetry plan of --rate, --duration or --messages, and --seed."""
    interval = 0.0 if args.rate == 0 else 1.0 / args.rate
    return TelemetryPlan(
        interval=interval,
        duration=None if args.messages else args.duration,
        count=args.messages,
        fields=default_fields(),
        seed=args.seed,
    )


def cmd_fleet(args: argparse.Namespace) -> int:
    """Set up (or reuse) hubs, DPS, CA and enrollment group (with --no-setup: read those
    `dpskit fleet prepare` made), then run the fleet or its shard."""
    base = Path(args.dir)
    if args.out and Path(args.out).suffix.lower() not in {".csv", ".parquet"}:
        raise ConfigError(f"--out must name a .csv or .parquet file, not {args.out!r}")
    plan = _telemetry(args)
    # The local cloud's default pacing (no wait between polls): limited by the machine.
    with open_target(args, base / "cloud") as cloud:
        if args.no_setup:
            dps, authority, group_key = _prepared(args, cloud, base)
        else:
            dps, _, authority, group_key = _set_up(args, cloud, base)
        fleet = Fleet(
            dps,
            count=args.devices,
            authority=authority,
            group_key=group_key,
            prefix=args.prefix,
            telemetry=plan,
            concurrency=args.concurrency,
            certificates_dir=None if args.symmetric_key else base / "certs" / "devices",
            shard=args.shard,
            pace_like_azure=args.pace_like_azure,
            time_compression=args.time_compression,
        )
        if args.no_setup:
            _missing_certificates(fleet)
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


def cmd_fleet_prepare(args: argparse.Namespace) -> int:
    """Create (or reuse) the hubs, DPS, CA and enrollment group once and issue every device's
    certificate, so shards started with --no-setup only read them."""
    base = Path(args.dir)
    with open_target(args, base / "cloud") as cloud:
        dps, hubs, authority, group = _set_up(args, cloud, base)
        where = "Azure" if args.azure else f"the local cloud ({cloud})"
        lines = [
            f"DPS {dps.name} (ID scope {dps.id_scope}) on {where}, linked to "
            + ", ".join(hub.name for hub in hubs)
        ]
        if authority is not None:
            folder = base / "certs" / "devices"
            fleet = Fleet(
                dps,
                count=args.devices,
                authority=authority,
                prefix=args.prefix,
                certificates_dir=folder,
            )
            certificates = fleet.certificates()
            lines.append(f"enrollment group {X509_GROUP} of CA {FLEET_CA} ({base / 'certs'})")
            lines.append(f"{len(certificates):,} device certificates in {folder}")
        elif group is not None:
            lines.append(f"enrollment group {group.enrollment_group_id} (symmetric key)")
    shards = ["dpskit", "fleet", "--no-setup", "--dir", str(base), "--devices", str(args.devices)]
    shards += ["--prefix", args.prefix]
    shards += ["--symmetric-key"] * args.symmetric_key + ["--azure"] * args.azure
    lines.append(f"run the shards with: {shlex.join(shards)} --shard I/N|auto ...")
    for line in lines:
        print(line)
    return 0


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


def _prepare_command(args: argparse.Namespace) -> str:
    """The `dpskit fleet prepare` that makes what the rendered Job's shards read."""
    words = ["dpskit", "fleet", "prepare", "--azure", "--dir", DEFAULT_FLEET_DIR]
    words += ["--devices", str(args.devices), "--hubs", str(args.hubs), "--prefix", args.prefix]
    if args.symmetric_key:
        words.append("--symmetric-key")
    return shlex.join(words)


def _shard_options(args: argparse.Namespace) -> list[str]:
    """The `dpskit fleet` options every shard runs with, defaults spelled out so that the
    pods do not depend on the image's defaults."""
    options = ["--prefix", args.prefix, "--rate", repr(args.rate)]
    if args.messages:
        options += ["--messages", str(args.messages)]
    else:
        options += ["--duration", repr(args.duration)]
    options += ["--seed", str(args.seed), "--concurrency", str(args.concurrency)]
    if args.symmetric_key:
        options.append("--symmetric-key")
    return options


def cmd_fleet_kubernetes(args: argparse.Namespace) -> int:
    """Print the Indexed Job that runs the fleet's shards against Azure."""
    # Registration ids are letters, digits and - . _ : (DPS's rule; dpskit lower-cases none).
    if not re.fullmatch(r"[a-z0-9._:-]*", args.prefix):
        raise ConfigError(
            f"--prefix {args.prefix!r}: registration ids are lower-case letters, digits and - . _ :"
        )
    if not math.isfinite(args.duration) or args.duration <= 0:
        raise ConfigError(f"--duration must be a positive number, not {args.duration}")
    prepare = _prepare_command(args)
    manifest = render_fleet_job(
        shards=args.shards,
        devices=args.devices,
        image=args.image,
        name=args.name,
        namespace=args.namespace,
        results_claim=args.results_claim,
        fleet_claim=args.fleet_claim,
        secret=args.secret,
        options=_shard_options(args),
        prepare=prepare,
        retries=args.retries,
        ttl_seconds=args.ttl,
        cpu=args.cpu,
        memory=args.memory,
    )
    sys.stdout.write(manifest)
    print(
        f"dpskit fleet kubernetes: {args.shards:,} shards of up to "
        f"{math.ceil(args.devices / args.shards):,} devices; prepare once first: {prepare}",
        file=sys.stderr,
    )
    return 0


def _fleet_options(p: argparse.ArgumentParser, *, devices_required: bool = False) -> None:
    """What the fleet is: its size, hubs, ids and credential kind."""
    if devices_required:
        p.add_argument("--devices", type=positive_int, required=True, help="devices in the fleet")
    else:
        p.add_argument("--devices", type=positive_int, default=100, help="devices in the fleet")
    p.add_argument("--hubs", type=positive_int, default=2, help="hubs to spread devices over")
    p.add_argument("--prefix", default="sensor-", help="registration id prefix")
    p.add_argument("--symmetric-key", action="store_true", help="symmetric-key group, no X.509")


def _run_options(p: argparse.ArgumentParser) -> None:
    """What each device does once provisioned, and how many register at once."""
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
    p.add_argument("--concurrency", type=positive_int, default=64, help="registrations at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the telemetry values")


def _where_options(p: argparse.ArgumentParser) -> None:
    """Where the fleet's state lives and which cloud it runs on."""
    p.add_argument("--dir", default=DEFAULT_FLEET_DIR, help="certificates and local state")
    p.add_argument("--local", metavar="DIR", help="a running `dpskit emulator`'s folder")
    p.add_argument("--azure", action="store_true", help="run against Azure")
    add_azure_options(p)


def add_fleet_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dpskit fleet`` and its ``prepare``, ``kubernetes`` and ``merge`` commands."""
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
        "Azure Batch (DPSKIT_SHARD_INDEX, DPSKIT_SHARD_COUNT). Shards started together run\n"
        "`dpskit fleet prepare` once first and then --no-setup, so that they do not race to\n"
        "create the CA or the resources. `dpskit fleet merge` combines the shards' --out\n"
        "results into one report; `dpskit fleet kubernetes` prints an Indexed Job for Azure.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _fleet_options(p)
    _run_options(p)
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
        "--no-setup",
        action="store_true",
        help="create nothing: use the DPS, CA, group and device certificates `dpskit fleet "
        "prepare` made (refused if they are missing; --hubs is then prepare's)",
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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no live line")
    _where_options(p)
    p.set_defaults(handler=cmd_fleet, parser=p)
    # Optional, so `dpskit fleet --devices N` keeps running a fleet.
    sub = p.add_subparsers(title="commands", metavar="COMMAND", required=False)

    prepare = sub.add_parser(
        "prepare",
        help="create the fleet's resources and certificates once, for shards run with --no-setup",
        description="Create (or reuse) the hubs, the DPS instance and its links, the CA in\n"
        "DIR/certs with its proof of possession and the enrollment group, issue every device's\n"
        "certificate into DIR/certs/devices (keys 0600), and exit. Shards then run\n"
        "`dpskit fleet --no-setup` with the same --dir, target, --devices and --prefix: they\n"
        "only read all this, so shards started together cannot each create a different CA.\n"
        "Give the options after `prepare`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _fleet_options(prepare)
    _where_options(prepare)
    prepare.set_defaults(handler=cmd_fleet_prepare, parser=prepare)

    kubernetes = sub.add_parser(
        "kubernetes",
        help="print a Kubernetes Indexed Job that runs the fleet's shards against Azure",
        description="Print (YAML) a batch/v1 Indexed Job of SHARDS pods, each running\n"
        "`dpskit fleet --shard auto --no-setup --azure --dir /fleet` on its slice of the\n"
        "devices and writing /results/shard-<index>.parquet. The fleet claim (mounted\n"
        "read-only at /fleet) holds what `dpskit fleet prepare --azure` wrote; the results\n"
        "claim (ReadWriteMany) takes every shard's result; the Secret holds AZURE_CLIENT_ID,\n"
        "AZURE_TENANT_ID, AZURE_CLIENT_SECRET, AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP.\n"
        "Memory per pod: 256 MiB + 48 KiB per device of a shard, unless --memory.\n"
        "Apply with `... | kubectl apply -f -`; then `dpskit fleet merge` the results folder.\n"
        "The Job targets Azure: the local cloud serves on its own machine's loopback only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kubernetes.add_argument("--shards", type=positive_int, required=True, help="pods (shards)")
    _fleet_options(kubernetes, devices_required=True)
    _run_options(kubernetes)
    kubernetes.add_argument("--image", required=True, help="container image with dpskit")
    kubernetes.add_argument("--name", default="dpskit-fleet", help="the Job's name")
    kubernetes.add_argument("--namespace", default="default", help="the Job's namespace")
    kubernetes.add_argument(
        "--results-claim",
        default="dpskit-results",
        metavar="PVC",
        help="PersistentVolumeClaim (ReadWriteMany) the shards write results to",
    )
    kubernetes.add_argument(
        "--fleet-claim",
        default="dpskit-fleet",
        metavar="PVC",
        help="PersistentVolumeClaim holding `dpskit fleet prepare`'s folder",
    )
    kubernetes.add_argument(
        "--secret", default="dpskit-azure", help="Secret with the Azure credentials"
    )
    kubernetes.add_argument(
        "--retries",
        type=non_negative_int,
        default=2,
        help="retries of a shard that crashed (killed, out of memory)",
    )
    kubernetes.add_argument(
        "--ttl",
        type=non_negative_int,
        default=86_400,
        metavar="SECONDS",
        help="how long the finished Job and its pods' logs stay",
    )
    kubernetes.add_argument("--cpu", default="1", help="CPU each pod requests")
    kubernetes.add_argument("--memory", help="memory each pod requests (default: sized)")
    kubernetes.set_defaults(handler=cmd_fleet_kubernetes, parser=kubernetes)

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
