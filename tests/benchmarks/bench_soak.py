"""Soak (issue 13): devices reconnecting through random drops for minutes, with telemetry,
cloud-to-device messages, direct methods and desired-property patches, against the embedded
emulator in this process. It checks that nothing acknowledged is lost, that nothing hangs, and
that memory stays flat.

Scenario: a ``LocalCloud`` with one hub and one DPS, linked; a root CA proven to DPS and an
X.509 enrollment group; ``--devices`` devices issued, provisioned through DPS and connected with
``HubClient``. For ``--duration`` seconds every device sends telemetry (JSON with a per-device
sequence number, ``--rate`` per second, each awaited until the hub's PUBACK), reads its C2D
messages, answers direct methods and reads desired patches; a service task sends C2D messages,
invokes methods and patches desired properties on random devices (failures while a device
reconnects are expected and counted); a chaos task drops a random device's connection every
``--drop-interval`` seconds (``random.Random(--seed)``; the client's reconnect backoff has its
own jitter, so runs are not bit-for-bit repeatable). This process's RSS (emulator and clients)
is sampled throughout.

Verdict (exit code 1 if any fails):

- telemetry: every sequence number whose ``send_telemetry`` returned is in
  ``hub.telemetry(device_id)`` (lost = acknowledged but not stored);
- C2D: every message whose ``send_c2d`` returned was received by its device at least once, or
  is still in its queue (read from the emulator's state store: the hub API has no read of it);
- twins: after the run each device reads its twin, whose desired value is the last patch the
  service made successfully;
- no hang: once the load stops, every telemetry sender and service call returns within
  ``--stall-timeout``, every device is connected again within ``--settle``, and every reader's
  stream ends when its client closes;
- memory: RSS at the end of the run minus RSS after the warm-up (the first 20%) stays under
  ``max(--max-growth-mb, --max-growth-pct of the warm-up RSS)``. Judged only for runs of 60 s or
  more (shorter runs are all warm-up: the allocators and SQLite's page cache are still filling)
  and unless ``--no-memory-check``.

The report counts drops and the reconnects seen (a device dropped again within 0.1 s of
reconnecting counts as one outage, so reconnects can trail drops slightly), telemetry sent,
acknowledged, stored and lost, C2D sent, received and still queued, method and twin outcomes,
and RSS: after the warm-up, at the end, growth in MB and per hour, and a value per tenth of the
run. Takes about ``--duration`` plus setup and checks (seconds); not part of CI.

Run: ``python tests/benchmarks/bench_soak.py [--devices 50] [--duration 600]
[--drop-interval 0.5] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpskit

#: Runs shorter than this are all warm-up: their memory is reported, not judged.
MIN_JUDGED_DURATION = 60.0
#: The share of the run after which RSS is taken as the baseline.
WARM_UP_SHARE = 0.2
#: Seconds between two looks at every client's connection state (the reconnect backoff is at
#: least 0.5 s, so no reconnect slips between two looks).
MONITOR_INTERVAL = 0.1


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Device:
    """One simulated device and what happened to it."""

    device_id: str
    client: dpskit.HubClient
    #: Sequence numbers handed out; the sender awaits each send, so every number below this
    #: was acknowledged unless it is in ``unacknowledged``.
    sent: int = 0
    unacknowledged: list[int] = field(default_factory=list)
    slowest_ack: float = 0.0
    sending: bool = False
    methods_answered: int = 0
    desired_received: int = 0
    #: The last desired value the service set successfully (``None``: never patched).
    desired_value: int | None = None
    desired_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    offline_since: float | None = None
    reconnects: int = 0
    longest_offline: float = 0.0

    @property
    def acknowledged(self) -> int:
        return self.sent - len(self.unacknowledged)


@dataclass
class C2dLedger:
    """C2D messages sent and received, by a key in their body. Only the messages not received
    yet are kept, so the ledger does not grow with the run (its memory is measured too)."""

    pending: dict[int, str] = field(default_factory=dict)
    next_key: int = 0
    sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    received: int = 0
    duplicates: int = 0
    #: Received although ``send_c2d`` raised (queued, then the call failed on the way back).
    received_after_error: int = 0
    #: Keys whose send raised, in case the message still arrives.
    failed_keys: set[int] = field(default_factory=set)

    def arrived(self, key: int) -> None:
        if self.pending.pop(key, None) is not None:
            self.received += 1
        elif key in self.failed_keys:
            self.failed_keys.discard(key)
            self.received_after_error += 1
        else:
            self.duplicates += 1


@dataclass
class Stats:
    """Counters of the service and chaos tasks."""

    drops: int = 0
    drops_offline: int = 0
    methods_ok: int = 0
    methods_failed: Counter[str] = field(default_factory=Counter)
    desired_ok: int = 0
    desired_failed: Counter[str] = field(default_factory=Counter)
    consumer_errors: Counter[str] = field(default_factory=Counter)
    #: (seconds since the start, RSS in KB).
    rss: list[tuple[float, int]] = field(default_factory=list)
    #: Senders still blocked in ``send_telemetry`` ``--stall-timeout`` after the run ended.
    hung_senders: list[str] = field(default_factory=list)
    #: Service calls that had not returned ``--stall-timeout`` after the method timeout.
    hung_service_calls: int = 0
    #: C2D, method and desired readers whose stream did not end when their client closed.
    stuck_consumers: int = 0
    offline_at_end: list[str] = field(default_factory=list)
    twin_mismatches: list[str] = field(default_factory=list)
    twins_checked: int = 0
    load_seconds: float = 0.0


def _failure_kind(error: BaseException) -> str:
    """A short label for a counted failure: Azure's error code when there is one."""
    code = getattr(error, "error_code", None)
    if code is not None:
        return f"{type(error).__name__} {code}"
    return type(error).__name__


async def _setup(
    cloud: dpskit.LocalCloud, count: int
) -> tuple[dpskit.Hub, list[tuple[str, dpskit.HubClient]]]:
    hub = cloud.create_hub("soak-hub")
    dps = cloud.create_dps("soak-dps")
    cloud.link_hub(dps, hub)
    root = dpskit.CertificateAuthority.create_root("Soak Root CA")
    dps.prove_possession("root", root)
    dps.create_enrollment_group("soak", ca_reference="root")
    trust = cloud.trust_pem
    certificates = root.issue_devices([f"soak-{i:05d}" for i in range(count)])
    slots = asyncio.Semaphore(16)

    async def one(certificate: dpskit.DeviceCertificate) -> tuple[str, dpskit.HubClient]:
        async with slots:
            result = await dpskit.provision(
                dps.device_endpoint, id_scope=dps.id_scope, certificate=certificate, trust=trust
            )
            client = await dpskit.HubClient.connect(result, certificate=certificate, trust=trust)
            return client.device_id, client

    return hub, list(await asyncio.gather(*(one(c) for c in certificates)))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps ``seconds``; ``True`` as soon as ``stop`` is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
    return stop.is_set()


async def _send_telemetry(device: Device, stop: asyncio.Event, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    interval = 1.0 / rate
    if await _sleep_or_stop(stop, rng.uniform(0, interval)):
        return
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sequence = device.sent
        device.sent += 1
        started = loop.time()
        device.sending = True
        try:
            await device.client.send_telemetry({"deviceId": device.device_id, "seq": sequence})
        except dpskit.DpsKitError:
            # Not acknowledged: the hub may or may not have stored it, neither is a loss.
            device.unacknowledged.append(sequence)
        finally:
            device.sending = False
        device.slowest_ack = max(device.slowest_ack, loop.time() - started)
        if await _sleep_or_stop(stop, interval * rng.uniform(0.8, 1.2)):
            return


async def _consume_c2d(device: Device, ledger: C2dLedger, stats: Stats) -> None:
    async for message in device.client.messages():
        try:
            ledger.arrived(int(message.json()["key"]))
        except (ValueError, KeyError, TypeError) as error:
            stats.consumer_errors[f"C2D body {type(error).__name__}"] += 1


async def _answer_methods(device: Device, stats: Stats) -> None:
    async for request in device.client.method_requests():
        try:
            await request.respond(200, {"echo": request.payload})
            device.methods_answered += 1
        except dpskit.DpsKitError as error:
            # The answer cannot reach the hub once the client is closed; while it reconnects it
            # is queued and sent again.
            stats.consumer_errors[f"method respond {_failure_kind(error)}"] += 1


async def _read_desired(device: Device) -> None:
    async for _patch in device.client.desired_updates():
        device.desired_received += 1


async def _service(
    hub: dpskit.Hub,
    devices: list[Device],
    ledger: C2dLedger,
    stats: Stats,
    stop: asyncio.Event,
    args: argparse.Namespace,
) -> None:
    """C2D messages, direct methods and desired patches in turn on random devices, at
    ``--service-rate`` calls per second, at most ``--service-concurrency`` in flight (a method
    to a device that dropped mid-call holds its thread for ``--method-timeout``)."""
    rng = random.Random(args.seed + 1)
    slots = asyncio.Semaphore(args.service_concurrency)
    running: set[asyncio.Task[None]] = set()

    async def c2d(device: Device) -> None:
        key = ledger.next_key
        ledger.next_key += 1
        # Registered before the call: the device may receive it before the call returns.
        ledger.pending[key] = device.device_id
        try:
            await asyncio.to_thread(hub.send_c2d, device.device_id, {"key": key, "pad": "x" * 64})
            ledger.sent += 1
        except dpskit.DpsKitError as error:
            ledger.refused[_failure_kind(error)] += 1
            if ledger.pending.pop(key, None) is not None:
                ledger.failed_keys.add(key)
            else:
                # Queued after all, and already received: not a message the service sent.
                ledger.received -= 1
                ledger.received_after_error += 1

    async def method(device: Device) -> None:
        payload = {"n": rng.randrange(1_000_000)}
        try:
            result = await asyncio.to_thread(
                hub.invoke_method,
                device.device_id,
                "ping",
                payload,
                timeout=args.method_timeout,
            )
        except dpskit.DpsKitError as error:
            stats.methods_failed[_failure_kind(error)] += 1
            return
        if result.status == 200 and result.payload == {"echo": payload}:
            stats.methods_ok += 1
        else:
            stats.methods_failed[f"answer {result.status}"] += 1

    async def desired(device: Device) -> None:
        # One patch at a time per device, so "the last successful patch" is well defined.
        async with device.desired_lock:
            value = rng.randrange(1_000_000)
            try:
                await asyncio.to_thread(hub.update_desired, device.device_id, {"soak": value})
            except dpskit.DpsKitError as error:
                stats.desired_failed[_failure_kind(error)] += 1
                # The patch may have been applied before the call failed: no expectation.
                device.desired_value = None
                return
            stats.desired_ok += 1
            device.desired_value = value

    async def guarded(call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        finally:
            slots.release()

    operations: list[Callable[[Device], Coroutine[Any, Any, None]]] = [c2d, method, desired]
    interval = 1.0 / args.service_rate
    turn = 0
    while not await _sleep_or_stop(stop, interval):
        await slots.acquire()
        if stop.is_set():
            slots.release()
            break
        operation = operations[turn % len(operations)]
        turn += 1
        task = asyncio.create_task(guarded(operation(rng.choice(devices))))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        _, hung = await asyncio.wait(running, timeout=args.method_timeout + args.stall_timeout)
        stats.hung_service_calls = len(hung)


async def _chaos(
    hub: dpskit.Hub,
    devices: list[Device],
    stats: Stats,
    stop: asyncio.Event,
    args: argparse.Namespace,
) -> None:
    rng = random.Random(args.seed)
    while not await _sleep_or_stop(stop, args.drop_interval):
        device = rng.choice(devices)
        if await asyncio.to_thread(hub.drop_connection, device.device_id):
            stats.drops += 1
        else:
            stats.drops_offline += 1


async def _monitor(
    devices: list[Device],
    stats: Stats,
    stop: asyncio.Event,
    started: float,
    sample_interval: float,
) -> None:
    """Counts reconnects (a client seen offline, then connected again) and samples RSS while
    the load runs."""
    loop = asyncio.get_running_loop()
    next_sample = loop.time()
    stopping = False
    while True:
        now = loop.time()
        for device in devices:
            connected = device.client.connection_state == "connected"
            if not connected and device.offline_since is None:
                device.offline_since = now
            elif connected and device.offline_since is not None:
                device.reconnects += 1
                device.longest_offline = max(device.longest_offline, now - device.offline_since)
                device.offline_since = None
        if now >= next_sample and not stats.load_seconds:
            stats.rss.append((now - started, _rss_kb()))
            next_sample = now + sample_interval
        if stopping:
            return
        # One more look after the stop: reconnects of the last moments count too.
        stopping = await _sleep_or_stop(stop, MONITOR_INTERVAL)


async def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _check_twins(devices: list[Device], stats: Stats) -> None:
    async def one(device: Device) -> None:
        if device.desired_value is None:
            return
        try:
            twin = await device.client.get_twin()
        except dpskit.DpsKitError as error:
            stats.twin_mismatches.append(f"{device.device_id}: {error}")
            return
        stats.twins_checked += 1
        seen = twin.get("desired", {}).get("soak")
        if seen != device.desired_value:
            stats.twin_mismatches.append(
                f"{device.device_id}: desired soak={seen}, expected {device.desired_value}"
            )

    await asyncio.gather(*(one(d) for d in devices))


async def _run(
    cloud: dpskit.LocalCloud, args: argparse.Namespace
) -> tuple[dpskit.Hub, list[Device], C2dLedger, Stats]:
    loop = asyncio.get_running_loop()
    # Service calls, drops and method timeouts hold threads: enough of them that a call never
    # waits for a thread.
    loop.set_default_executor(ThreadPoolExecutor(args.service_concurrency + 4))
    hub, clients = await _setup(cloud, args.devices)
    devices = [Device(device_id, client) for device_id, client in clients]
    ledger, stats = C2dLedger(), Stats()

    consumers = [
        asyncio.create_task(consumer)
        for device in devices
        for consumer in (
            _consume_c2d(device, ledger, stats),
            _answer_methods(device, stats),
            _read_desired(device),
        )
    ]
    stop_load, stop_senders, stop_monitor = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started = loop.time()
    sample_interval = min(args.sample_interval, max(0.2, args.duration / 60))
    monitor = asyncio.create_task(_monitor(devices, stats, stop_monitor, started, sample_interval))
    senders = [
        asyncio.create_task(_send_telemetry(d, stop_senders, args.rate, args.seed * 100_003 + i))
        for i, d in enumerate(devices)
    ]
    load = [
        asyncio.create_task(_service(hub, devices, ledger, stats, stop_load, args)),
        asyncio.create_task(_chaos(hub, devices, stats, stop_load, args)),
    ]

    await asyncio.sleep(args.duration)
    stats.rss.append((loop.time() - started, _rss_kb()))
    stats.load_seconds = loop.time() - started
    stop_load.set()
    await asyncio.gather(*load)
    stop_senders.set()
    # A sender blocked in send_telemetry returns once its client reconnects and the hub
    # acknowledges; one still blocked after the stall timeout is a hang.
    _, blocked = await asyncio.wait(senders, timeout=args.stall_timeout)
    stats.hung_senders = [d.device_id for d in devices if d.sending]
    for task in blocked:
        task.cancel()
    await asyncio.gather(*blocked, return_exceptions=True)

    # Let every client reconnect and every queued C2D message arrive.
    await _wait_until(
        lambda: (
            not ledger.pending and all(d.client.connection_state == "connected" for d in devices)
        ),
        args.settle,
    )
    stop_monitor.set()
    await monitor
    stats.offline_at_end = [
        d.device_id for d in devices if d.client.connection_state != "connected"
    ]
    await _check_twins(devices, stats)

    await asyncio.gather(*(d.client.close() for d in devices))
    # The streams end when their client closes; a consumer that does not is stuck.
    _, stuck = await asyncio.wait(consumers, timeout=args.stall_timeout)
    stats.stuck_consumers = len(stuck)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    return hub, devices, ledger, stats


def _queued_c2d(state_dir: Path) -> dict[int, str]:
    """Keys of the C2D messages still queued, with their device, read from the emulator's SQLite
    store (read only): the hub API can send C2D messages but not list a device's queue."""
    queued: dict[int, str] = {}
    uri = f"file:{state_dir / 'state.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT key, body FROM documents WHERE kind = 'c2d'").fetchall()
    for key, body in rows:
        # Documents are keyed "hub/device id"; the soak has one hub.
        device_id = key.rsplit("/", 1)[-1]
        for message in json.loads(body):
            queued[json.loads(base64.b64decode(message["body"]))["key"]] = device_id
    return queued


@dataclass
class Memory:
    """RSS after the warm-up and at the end of the load (KB), and the trend in between."""

    warm_up_kb: float
    warm_up_at: float
    end_kb: float
    end_at: float
    peak_kb: int
    trend_mb_per_hour: float | None

    @property
    def growth_mb(self) -> float:
        return (self.end_kb - self.warm_up_kb) / 1024

    @property
    def growth_mb_per_hour(self) -> float:
        return self.growth_mb * 3600 / max(self.end_at - self.warm_up_at, 1e-9)


def _memory(samples: list[tuple[float, int]], duration: float) -> Memory:
    """Medians over a window after the warm-up and over the last 5% of the run (one sample is
    noisy: an allocation burst, a SQLite checkpoint), and the least-squares slope in between."""
    warm_up_at = duration * WARM_UP_SHARE
    window = max(duration * 0.05, 1e-9)
    early = [s for s in samples if warm_up_at <= s[0] <= warm_up_at + window] or [
        next((s for s in samples if s[0] >= warm_up_at), samples[-1])
    ]
    late = [s for s in samples if s[0] >= duration - window] or samples[-1:]
    after = [s for s in samples if s[0] >= warm_up_at]
    trend = None
    if len(after) >= 3 and after[-1][0] > after[0][0]:
        xs = [s[0] for s in after]
        ys = [s[1] / 1024 for s in after]
        trend = statistics.linear_regression(xs, ys).slope * 3600
    return Memory(
        warm_up_kb=statistics.median(s[1] for s in early),
        warm_up_at=statistics.median(s[0] for s in early),
        end_kb=statistics.median(s[1] for s in late),
        end_at=statistics.median(s[0] for s in late),
        peak_kb=max(s[1] for s in samples),
        trend_mb_per_hour=trend,
    )


def _describe(counter: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counter.most_common()) or "none"


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the report; 0 only if nothing acknowledged was lost, nothing hung
    and memory stayed flat."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=50, help="devices connected throughout")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--drop-interval", type=float, default=0.5, help="seconds between drops")
    parser.add_argument("--seed", type=int, default=1, help="seed of the chaos and the service")
    parser.add_argument("--rate", type=float, default=4.0, help="messages per second per device")
    parser.add_argument("--service-rate", type=float, default=15.0, help="service calls per s")
    parser.add_argument("--service-concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--method-timeout", type=float, default=5.0, help="direct method timeout")
    parser.add_argument("--sample-interval", type=float, default=2.0, help="seconds between RSS")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to reconnect at end")
    parser.add_argument("--stall-timeout", type=float, default=60.0, help="a hang past this")
    parser.add_argument("--max-growth-mb", type=float, default=16.0, help="allowed RSS growth")
    parser.add_argument("--max-growth-pct", type=float, default=10.0, help="same, % of warm-up")
    parser.add_argument(
        "--no-memory-check", action="store_true", help="report memory without judging it"
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.duration <= 0 or args.drop_interval <= 0 or args.rate <= 0:
        parser.error("--devices, --duration, --drop-interval and --rate must be positive")

    with tempfile.TemporaryDirectory(prefix="dpskit-bench-soak-") as folder:
        state_dir = Path(folder) / "cloud"
        # Fast mode (no wait between DPS polls): the soak starts at once.
        with dpskit.LocalCloud(state_dir, port=0, poll_retry_after=0) as cloud:
            hub, devices, ledger, stats = asyncio.run(_run(cloud, args))
            stored_total = duplicates_stored = lost = 0
            lost_examples: list[str] = []
            for device in devices:
                stored = Counter(m.json()["seq"] for m in hub.telemetry(device.device_id))
                stored_total += len(stored)
                duplicates_stored += sum(stored.values()) - len(stored)
                unacknowledged = set(device.unacknowledged)
                missing = [
                    s for s in range(device.sent) if s not in stored and s not in unacknowledged
                ]
                lost += len(missing)
                if missing:
                    lost_examples.append(f"{device.device_id}: {missing[:10]}")
            queued_note = ""
            still_queued = 0
            c2d_lost = len(ledger.pending)
            if ledger.pending:
                try:
                    queued = _queued_c2d(state_dir)
                except (sqlite3.Error, ValueError, KeyError, TypeError) as error:
                    queued_note = f" (queue unreadable: {error})"
                else:
                    still_queued = sum(
                        1
                        for key, device_id in ledger.pending.items()
                        if queued.get(key) == device_id
                    )
                    c2d_lost -= still_queued

    acknowledged = sum(d.acknowledged for d in devices)
    sent = sum(d.sent for d in devices)
    memory = _memory(stats.rss, stats.load_seconds)
    limit_mb = max(args.max_growth_mb, memory.warm_up_kb / 1024 * args.max_growth_pct / 100)
    judged = not args.no_memory_check and args.duration >= MIN_JUDGED_DURATION
    memory_flat = memory.growth_mb <= limit_mb
    reconnects = sum(d.reconnects for d in devices)
    longest_offline = max(d.longest_offline for d in devices)
    slowest_ack = max(d.slowest_ack for d in devices)

    print("Soak: devices reconnecting through random drops, telemetry, C2D, methods, twins")
    print(
        f"  {args.devices} devices, {stats.load_seconds:.0f} s, "
        f"a drop every {args.drop_interval:g} s "
        f"(seed {args.seed}), {args.rate:g} msgs/s per device, {args.service_rate:g} service "
        f"calls/s; emulator in process; python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(
        f"drops          {stats.drops} (+{stats.drops_offline} on devices already offline); "
        f"reconnects observed {reconnects}; longest offline {longest_offline:.1f} s; "
        f"offline at end {len(stats.offline_at_end)}"
    )
    print(
        f"telemetry      {acknowledged - lost} of {acknowledged} acknowledged messages stored "
        f"({lost} lost); sent {sent}, not acknowledged {sent - acknowledged}, stored "
        f"{stored_total} (+{duplicates_stored} duplicates); slowest ack {slowest_ack:.2f} s"
    )
    print(
        f"C2D            sent {ledger.sent} (refused: {_describe(ledger.refused)}), received "
        f"{ledger.received} (+{ledger.duplicates} duplicates, {ledger.received_after_error} "
        f"after a failed send), still queued {still_queued}, lost {c2d_lost}{queued_note}"
    )
    print(
        f"methods        ok {stats.methods_ok}, failed {sum(stats.methods_failed.values())} "
        f"({_describe(stats.methods_failed)}); answered by devices "
        f"{sum(d.methods_answered for d in devices)}"
    )
    print(
        f"twin desired   patches ok {stats.desired_ok}, failed "
        f"{sum(stats.desired_failed.values())} ({_describe(stats.desired_failed)}); received by "
        f"devices {sum(d.desired_received for d in devices)}; final twins "
        f"{stats.twins_checked - len(stats.twin_mismatches)} of {stats.twins_checked} match"
    )
    trend = (
        f", trend {memory.trend_mb_per_hour:+.1f} MB/h"
        if memory.trend_mb_per_hour is not None
        else ""
    )
    verdict = (
        ("flat" if memory_flat else "GROWING")
        if judged
        else f"not judged ({'--no-memory-check' if args.no_memory_check else 'run < 60 s'})"
    )
    print(
        f"memory (RSS)   warm-up {memory.warm_up_kb / 1024:.1f} MB at {memory.warm_up_at:.0f} s, "
        f"end {memory.end_kb / 1024:.1f} MB at {memory.end_at:.0f} s, peak "
        f"{memory.peak_kb / 1024:.1f} MB; growth {memory.growth_mb:+.1f} MB "
        f"({memory.growth_mb_per_hour:+.1f} MB/h{trend}); limit {limit_mb:.1f} MB: {verdict}"
    )
    tenths = [
        next((kb for at, kb in stats.rss if at >= stats.load_seconds * k / 10), stats.rss[-1][1])
        for k in range(11)
    ]
    print(
        f"RSS curve      {' '.join(f'{kb / 1024:.1f}' for kb in tenths)} MB (each tenth of the run)"
    )
    if stats.consumer_errors:
        print(f"device errors  {_describe(stats.consumer_errors)}")

    failures: list[str] = []
    if lost:
        failures.append(f"{lost} acknowledged messages lost: {'; '.join(lost_examples[:5])}")
    if c2d_lost:
        failures.append(f"{c2d_lost} C2D messages neither received nor queued")
    if stats.twin_mismatches:
        failures.append(f"twins: {'; '.join(stats.twin_mismatches[:5])}")
    if stats.hung_senders:
        failures.append(f"senders hung: {', '.join(stats.hung_senders[:10])}")
    if stats.hung_service_calls:
        failures.append(f"{stats.hung_service_calls} service calls never returned")
    if stats.stuck_consumers:
        failures.append(f"{stats.stuck_consumers} device readers still waiting after close")
    if stats.offline_at_end:
        failures.append(f"not reconnected: {', '.join(stats.offline_at_end[:10])}")
    if judged and not memory_flat:
        failures.append(f"RSS grew {memory.growth_mb:.1f} MB (limit {limit_mb:.1f} MB)")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("verdict: " + ("FAIL" if failures else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
