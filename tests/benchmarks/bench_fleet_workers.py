"""One fleet run by one process vs by worker processes, in one run, against one emulator process:
``Fleet(...).run()`` in this process, then ``Fleet(...).run(executor=ProcessPoolExecutor(N,
mp_context=spawn))`` for the same number of X.509 devices, two hubs with hashed allocation and a
short telemetry plan (2 messages per device by default, QoS 1). The certificates are issued
beforehand into a ``certificates_dir`` by a process of their own, so issuance is neither timed
nor in either run's memory; both runs read them from the folder inside the run.

The emulator runs in its own process (``dpskit emulator --port 0``) with its default pacing (no
wait between DPS polls: the figures are what the machine allows) and ``--max-connections`` raised
to this machine's open-file hard limit less 1,024 of headroom, at most 100,000 (printed). Each
run provisions fresh devices (prefixes ``one-`` then ``workers-``) so that both do the same work,
new registrations and new hub identities, rather than the second re-provisioning known devices;
the second runs against an emulator that already holds the first's devices. ``--concurrency``
is the Fleet's, which every worker's shard applies on its own: N workers have up to N times as
many handshakes in flight.

Figures, side by side with ratios (workers / one process):

- devices provisioned + connected per second: devices / the report's connect phase;
- wall time: of the ``run()`` call, and the report's own ``elapsed``;
- acknowledged messages per second: the report's ``telemetry_rate``, first publish to last PUBACK
  (a merged run's span starts with its first shard's telemetry, while later shards still
  connect, so it is the workers' lower bound);
- memory per device: for one process, this process's RSS growth over the run / devices (sampled,
  and its high-water mark); for the workers, each worker's peak less its idle baseline (the pool
  is warmed first by a task that imports dpskit and returns its peak), summed, / devices, from
  ``FleetReport.shard_runs`` (``VmHWM`` on Linux: ``getrusage``'s peak survives fork and exec,
  so a spawned worker's would be at least its parent's);
- CPU seconds (user + system) of the fleet's processes and of the emulator, how busy they kept
  the cores over the run, and the share other processes took meanwhile (Linux, ``/proc``);
- the emulator's RSS before, at its sampled peak during, and after each run (Linux only, from
  ``/proc/<pid>/status``; elsewhere a note says it is not measured).

On a 2-core machine the fleet's processes and the emulator share two cores, and every step is CPU
work on both sides (TLS handshakes with ECDSA signatures, MQTT, DPS and hub bookkeeping): the run
takes about (fleet CPU + emulator CPU) / 2 cores, and one process already keeps both cores over 90%
busy. Workers cannot add cores here, so expect devices per second near 1x (0.99x-1.08x measured
with three workers) and a little more memory per device (per-process buffers and allocator
arenas the idle baseline does not hold). A local pool's workers share the machine's cores out
(one runtime thread each here); with a thread per core in every worker (``--worker-threads 2``)
the fleet spends a sixth to two fifths more CPU on the same devices and falls to 0.75x-0.9x.
What workers buy, more cores or machines for the clients, shows only where the emulator (or
Azure) is not on the same cores. Other processes on the machine move the figures by as much as
their printed share: compare runs where it is low.

Run: ``python tests/benchmarks/bench_fleet_workers.py [--devices 10000] [--workers 3]
[--messages 2] [--concurrency 64] [--worker-threads N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dpskit

sys.path.insert(0, str(Path(__file__).parent))
from bench_device import _rss_kb, burst_plan, emulator_subprocess, hashed_fleet

#: Descriptors the emulator keeps for itself: its listeners, state files, REST and AMQP clients.
HEADROOM = 1_024
#: Past this the limit says nothing on a machine that can hold a few tens of thousands anyway.
CONNECTION_CAP = 100_000


def connection_limit() -> int:
    """The emulator's ``--max-connections``: the open-file hard limit (what its soft limit is
    raised to) less ``HEADROOM``, at most ``CONNECTION_CAP``; the cap where there is no limit
    (Windows, or unlimited)."""
    if sys.platform == "win32":
        return CONNECTION_CAP
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return CONNECTION_CAP
    return max(1, min(hard - HEADROOM, CONNECTION_CAP))


def _status_kb(pid: int | str, key: str) -> int | None:
    """A KB field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); None where there is none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None


def _rss_kb_of(pid: int) -> int | None:
    """Process ``pid``'s resident memory in KB (None off Linux)."""
    return _status_kb(pid, "VmRSS")


def _cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU seconds process ``pid`` has used, all its threads (None off Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of proc(5)'s stat; after the ")" that ends the
    # command name (which may hold spaces) comes field 3.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_sum(pids: Sequence[int | str]) -> float | None:
    """The CPU seconds of ``pids`` together (None when any is unknown)."""
    seconds = [_cpu_seconds(pid) for pid in pids]
    return None if None in seconds else sum(s for s in seconds if s is not None)


def _machine_cpu() -> tuple[float, float] | None:
    """The machine's (busy, total) CPU time so far, in clock ticks, from ``/proc/stat`` (None
    off Linux): what other processes took of the cores during a run shows in their difference."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return None
    ticks = [float(t) for t in first.split()[1:]]
    # idle and iowait are the 4th and 5th columns; guest time is already in user and nice.
    total = sum(ticks[:8])
    return total - ticks[3] - ticks[4], total


def _others_share(before: tuple[float, float] | None, own: float | None) -> float | None:
    """The share of the machine's CPU time since ``before`` that processes other than the
    measured ones (``own`` CPU seconds) used, in percent."""
    after = _machine_cpu()
    if before is None or after is None or own is None:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    return max(0.0, 100 * (busy - own * os.sysconf("SC_CLK_TCK")) / total)


def _idle_worker() -> tuple[int, int | None]:
    """A pool worker's pid and peak RSS in bytes with dpskit loaded and nothing run, as
    ``FleetReport.shard_runs`` measures it: the baseline its shard's peak is measured against.
    The pause keeps the worker busy so that each warm-up task lands on a different worker."""
    from dpskit.fleet_executor import peak_rss_bytes

    time.sleep(0.5)
    return os.getpid(), peak_rss_bytes()


def _issue(chain_pem: str, key_pem: str, ids: list[str], folder: str) -> int:
    """Issues ``ids``' certificates into ``folder`` (run in a process of its own, so that
    neither run's memory holds, or reuses, what issuance allocated)."""
    authority = dpskit.CertificateAuthority.from_pem(chain_pem, key_pem)
    authority.issue_devices(ids, output_dir=folder)
    return len(ids)


@dataclass
class Run:
    """One fleet run's figures."""

    name: str
    devices: int
    connect_phase: float
    wall: float
    elapsed: float
    acknowledged: int
    messages_per_second: float
    kb_per_device: float
    emulator_kb: tuple[int | None, int | None, int | None]
    fleet_cpu: float | None
    emulator_cpu: float | None
    others_cpu_percent: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def devices_per_second(self) -> float:
        """Devices provisioned and connected per second of the connect phase."""
        return self.devices / max(self.connect_phase, 1e-9)


class _EmulatorSampler:
    """The emulator's RSS before a run, its highest sample during it and after it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = _rss_kb_of(pid)
        self.peak = self.before
        self.cpu_before = _cpu_seconds(pid)

    def sample(self) -> None:
        """Takes one sample (called from the fleet's progress callback, ~5 times a second)."""
        now = _rss_kb_of(self.pid)
        if now is not None:
            self.peak = max(self.peak or 0, now)

    def finish(self) -> tuple[int | None, int | None, int | None]:
        """(before, peak, after) in KB."""
        self.sample()
        return self.before, self.peak, _rss_kb_of(self.pid)

    def cpu(self) -> float | None:
        """CPU seconds the emulator used since this sampler was made."""
        now = _cpu_seconds(self.pid)
        return None if now is None or self.cpu_before is None else now - self.cpu_before


def _fleet(
    dps: dpskit.Dps,
    authority: dpskit.CertificateAuthority,
    args: argparse.Namespace,
    prefix: str,
    folder: Path,
    worker_threads: int | None = None,
) -> dpskit.Fleet:
    plan = burst_plan(args.messages)
    return dpskit.Fleet(
        dps,
        authority=authority,
        count=args.devices,
        prefix=prefix,
        telemetry=plan,
        concurrency=args.concurrency,
        certificates_dir=folder,
        # The messages' times give the telemetry's span (a few bytes per message to keep).
        record_messages=True,
        worker_threads=worker_threads,
    )


def _one_process(fleet: dpskit.Fleet, emulator_pid: int) -> Run:
    emulator = _EmulatorSampler(emulator_pid)
    before = _rss_kb()
    peak = [before]

    def sample(_: dpskit.FleetProgress) -> None:
        peak[0] = max(peak[0], _rss_kb())
        emulator.sample()

    high_water = _status_kb("self", "VmHWM")
    cpu_before = _cpu_seconds("self")
    machine = _machine_cpu()
    start = time.perf_counter()
    report = fleet.run(progress=False, on_progress=sample)
    wall = time.perf_counter() - start
    cpu_after = _cpu_seconds("self")
    emulator_cpu = emulator.cpu()
    fleet_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    own = None if fleet_cpu is None or emulator_cpu is None else fleet_cpu + emulator_cpu
    others = _others_share(machine, own)
    peak[0] = max(peak[0], _rss_kb())
    # Samples five times a second can miss the peak; the high-water mark cannot, when this run
    # set it (it holds this process's earlier peaks too).
    after = _status_kb("self", "VmHWM")
    if high_water is not None and after is not None and after > high_water:
        peak[0] = max(peak[0], after)
    assert report.completed == fleet.count, report.summary()
    return Run(
        name="1 process",
        devices=report.completed,
        connect_phase=report.connect_phase,
        wall=wall,
        elapsed=report.elapsed,
        acknowledged=report.messages_acknowledged,
        messages_per_second=report.telemetry_rate,
        kb_per_device=(peak[0] - before) / report.completed,
        emulator_kb=emulator.finish(),
        fleet_cpu=fleet_cpu,
        emulator_cpu=emulator_cpu,
        others_cpu_percent=others,
    )


def _workers(fleet: dpskit.Fleet, workers: int, emulator_pid: int) -> Run:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        # Warm-up: every worker started, dpskit imported, its peak RSS taken as its baseline.
        idle: dict[int, int | None] = {}
        deadline = time.monotonic() + 120
        while len(idle) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(idle)} of {workers} workers started")
            futures = [pool.submit(_idle_worker) for _ in range(workers - len(idle))]
            idle.update(f.result() for f in futures)
        processes: list[int | str] = ["self", *idle]
        emulator = _EmulatorSampler(emulator_pid)
        cpu_before = _cpu_sum(processes)
        machine = _machine_cpu()
        start = time.perf_counter()
        report = fleet.run(
            progress=False, on_progress=lambda _: emulator.sample(), executor=pool, shards=workers
        )
        wall = time.perf_counter() - start
        cpu_after = _cpu_sum(processes)
        emulator_cpu = emulator.cpu()
        fleet_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        own = None if fleet_cpu is None or emulator_cpu is None else fleet_cpu + emulator_cpu
        others = _others_share(machine, own)
    assert report.completed == fleet.count, report.summary()
    notes = []
    pids = [run.pid for run in report.shard_runs]
    if len(set(pids)) < len(pids):
        notes.append(f"shards shared workers (pids {pids}): their peaks count once per shard")
    # Each worker's own peak (FleetReport.shard_runs: VmHWM on Linux, which starts afresh
    # with the spawned program) less its peak when idle with dpskit loaded.
    grown_kb = 0.0
    shown = []
    for run in report.shard_runs:
        base = idle.get(run.pid) if run.pid else None
        if base is not None and run.peak_rss_bytes is not None:
            grown_kb += (run.peak_rss_bytes - base) / 1024
            shown.append(f"{base / 2**20:.0f} -> {run.peak_rss_bytes / 2**20:.0f}")
        else:
            notes.append(f"shard {run.shard[0]}: no peak RSS or baseline, counted as 0")
    notes.append(f"workers' peak RSS, MB (idle -> after the run): {', '.join(shown)}")
    return Run(
        name=f"{workers} worker processes",
        devices=report.completed,
        connect_phase=report.connect_phase,
        wall=wall,
        elapsed=report.elapsed,
        acknowledged=report.messages_acknowledged,
        messages_per_second=report.telemetry_rate,
        kb_per_device=grown_kb / report.completed,
        emulator_kb=emulator.finish(),
        fleet_cpu=fleet_cpu,
        emulator_cpu=emulator_cpu,
        others_cpu_percent=others,
        notes=notes,
    )


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f}"


def print_table(one: Run, many: Run, limit: int, args: argparse.Namespace) -> None:
    """Prints the two runs side by side with the ratios (workers / one process)."""
    print("One fleet: one process vs worker processes, against one emulator process")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs; {args.devices:,} X.509 "
        f"devices per run, 2 hubs (hashed), {args.messages} messages per device (QoS 1), "
        f"concurrency {args.concurrency} per process; emulator --max-connections {limit:,}"
    )
    shared = max(1, (os.cpu_count() or 1) // args.workers)
    threads = (
        f"{shared} (the cores shared out)"
        if args.worker_threads is None
        else str(args.worker_threads)
    )
    print(f"  runtime threads: one per core in the one process, {threads} in each worker")
    print()
    short = f"{args.workers} workers"
    print(f"{'':44} {'1 process':>12} {short:>12} {'ratio':>8}")

    def row(label: str, a: float, b: float, fmt: str, ratio: bool = True) -> None:
        shown = f"{b / a:7.2f}x" if ratio and a > 0 else ""
        print(f"{label:44} {a:>12{fmt}} {b:>12{fmt}} {shown:>8}")

    row("devices provisioned + connected", one.devices, many.devices, ",", ratio=False)
    row(
        "devices/s (devices / connect phase)",
        one.devices_per_second,
        many.devices_per_second,
        ",.1f",
    )
    row("connect phase, s", one.connect_phase, many.connect_phase, ".2f")
    row("wall time of run(), s", one.wall, many.wall, ".2f")
    row("report elapsed, s", one.elapsed, many.elapsed, ".2f")
    row("messages acknowledged", one.acknowledged, many.acknowledged, ",", ratio=False)
    row(
        "messages/s (first publish to last PUBACK)",
        one.messages_per_second,
        many.messages_per_second,
        ",.0f",
    )
    row("memory per device, KB", one.kb_per_device, many.kb_per_device, ".1f")
    if sys.platform == "linux":
        cpus = os.cpu_count() or 1
        cpu = [(r.fleet_cpu or 0.0, r.emulator_cpu or 0.0) for r in (one, many)]
        row("fleet CPU, s (this process + workers)", cpu[0][0], cpu[1][0], ".1f")
        row("emulator CPU, s", cpu[0][1], cpu[1][1], ".1f")
        busy = [100 * (f + e) / (r.wall * cpus) for (f, e), r in zip(cpu, (one, many), strict=True)]
        row(f"CPU busy over run(), % of {cpus} cores", busy[0], busy[1], ".0f")
        others = [r.others_cpu_percent or 0.0 for r in (one, many)]
        row("  other processes' share meanwhile, %", others[0], others[1], ".0f", ratio=False)
        for label, index in (("before", 0), ("peak", 1), ("after", 2)):
            a, b = one.emulator_kb[index], many.emulator_kb[index]
            print(f"{'emulator RSS ' + label + ', MB':44} {_mb(a):>12} {_mb(b):>12}")
    else:
        print("emulator RSS: not measured (read from /proc, Linux only)")
    for run in (one, many):
        for note in run.notes:
            print(f"{run.name}: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000, help="devices in each run")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--messages", type=int, default=2, help="messages per device")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="devices in flight, per process"
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="Rust runtime threads in each worker process (default: the Fleet's, the cores "
        "shared out among a local pool's workers); the one-process run keeps one per core",
    )
    args = parser.parse_args(argv)
    if args.devices < args.workers or args.workers < 1:
        parser.error("--devices must be at least --workers, and --workers at least 1")

    limit = connection_limit()
    if args.devices > limit:
        print(f"warning: {args.devices:,} devices exceed the emulator's {limit:,} connections")
    with tempfile.TemporaryDirectory(prefix="dpskit-bench-workers-") as folder:
        certificates = Path(folder) / "certificates"
        with emulator_subprocess(Path(folder) / "cloud", 0, "--max-connections", str(limit)) as (
            emulator,
            cloud,
        ):
            dps, inter = hashed_fleet(cloud, "Workers")
            one_fleet = _fleet(dps, inter, args, "one-", certificates)
            many_fleet = _fleet(
                dps, inter, args, "workers-", certificates, worker_threads=args.worker_threads
            )
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(2, mp_context=context) as issuer:
                issued = [
                    issuer.submit(
                        _issue,
                        inter.full_chain_pem,
                        inter.private_key_pem,
                        fleet.registration_ids,
                        str(certificates),
                    )
                    for fleet in (one_fleet, many_fleet)
                ]
                assert sum(f.result() for f in issued) == 2 * args.devices

            one = _one_process(one_fleet, emulator.pid)
            many = _workers(many_fleet, args.workers, emulator.pid)

    print_table(one, many, limit, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
