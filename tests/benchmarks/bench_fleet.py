"""Fleets side by side, in one run: ``dpskit.Fleet`` vs the official azure-iot-device SDK (one
client per device on a thread each, as its samples do), both provisioning X.509 devices through
the emulator's DPS, connecting them to the assigned hubs (two, hashed) and sending telemetry.

The emulator runs in its own process (``dpskit emulator`` on port 8883, which the SDK needs) with
its default settings (no fast-mode flags), so this process's memory growth is the fleet's alone;
``--poll-retry-after 3`` makes its DPS pace devices as Azure's does. Figures: devices provisioned
and connected per second (all held connected at once), memory per connected device (peak RSS
growth / devices, certificates issued beforehand), and acknowledged telemetry messages per
second across the fleet.

Run: ``python tests/benchmarks/bench_fleet.py [--devices 10000] [--messages 20]
[--sdk-devices 50] [--poll-retry-after S]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dpskit

sys.path.insert(0, str(Path(__file__).parent))
from bench_device import (
    _rss_kb,
    _sdk_device,
    burst_plan,
    emulator_port,
    emulator_process,
    hashed_fleet,
)

BODY = b'{"temperature": 21.5, "humidity": 40.2, "status": "ok"}'


def _sdk_fleet(
    dps: Any,
    trust: str | None,
    devices: list[dpskit.DeviceCertificate],
    folder: Path,
    messages: int,
) -> tuple[float, float, float, int]:
    """Provision + connect every device on its own thread, then send ``messages`` each.
    Returns (connect seconds, KB per device, send seconds, messages acknowledged)."""
    from azure.iot.device import Message

    before = _rss_kb()
    start = time.perf_counter()
    with ThreadPoolExecutor(len(devices)) as pool:
        clients = list(pool.map(lambda d: _sdk_device(dps, trust, d, folder), devices))
    connect_seconds = time.perf_counter() - start
    per_device = (_rss_kb() - before) / len(clients)

    def send(client: Any) -> int:
        for _ in range(messages):
            client.send_message(Message(BODY, content_encoding="utf-8"))  # type: ignore[no-untyped-call]
        return messages

    start = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        acknowledged = sum(pool.map(send, clients))
    send_seconds = time.perf_counter() - start
    for client in clients:
        client.shutdown()
    return connect_seconds, per_device, send_seconds, acknowledged


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000, help="devices for dpskit")
    parser.add_argument("--messages", type=int, default=20, help="messages per device")
    parser.add_argument("--concurrency", type=int, default=64, help="dpskit devices in flight")
    parser.add_argument("--sdk-devices", type=int, default=50, help="devices for the SDK")
    parser.add_argument(
        "--poll-retry-after",
        type=int,
        default=None,
        help="retry-after DPS advises while assigning (default: the emulator's; Azure sends 3)",
    )
    args = parser.parse_args(argv)

    port, sdk_note = emulator_port()

    rows: list[tuple[str, int, float, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="dpskit-bench-fleet-") as folder,
        emulator_process(Path(folder) / "cloud", port, args.poll_retry_after) as cloud,
    ):
        dps, inter = hashed_fleet(cloud, "Fleet")
        trust = cloud.trust_pem

        plan = burst_plan(args.messages)
        fleet = dpskit.Fleet(
            dps,
            authority=inter,
            count=args.devices,
            prefix="fleet-",
            telemetry=plan,
            concurrency=args.concurrency,
            record_messages=False,
        )
        fleet.certificates()  # issued before measuring: the fleet's memory is its connections
        before = _rss_kb()
        peak = [before]

        def sample(snapshot: dpskit.FleetProgress) -> None:
            peak[0] = max(peak[0], _rss_kb())

        report = fleet.run(progress=False, on_progress=sample)
        per_device = (peak[0] - before) / max(1, report.completed)
        assert report.completed == args.devices, report.summary()
        telemetry_seconds = report.elapsed - report.connect_phase
        rows.append(
            (
                "dpskit.Fleet (one process, a task per device)",
                report.completed,
                report.provisioning_rate,
                per_device,
                report.messages_acknowledged / max(telemetry_seconds, 1e-9),
            )
        )

        if not sdk_note and args.sdk_devices > 0:
            # With the emulator's CA pinned (one root in its TLS contexts: the SDK at its
            # leanest), then with the system trust store it uses against Azure when not given
            # a certificate (the emulator's CA appended, through SSL_CERT_FILE).
            system_bundle = Path(ssl.get_default_verify_paths().cafile or "/nonexistent")
            variants: list[tuple[str, str | None]] = [
                ("azure-iot-device 2.x, pinned root (thread/device)", trust)
            ]
            if system_bundle.is_file():
                variants.append(("azure-iot-device 2.x, system trust (as on Azure)", None))
            for number, (name, sdk_trust) in enumerate(variants):
                devices = inter.issue_devices(
                    [f"sdk{number}-{i:05d}" for i in range(args.sdk_devices)]
                )
                bundle = Path(folder) / "system-and-emulator.pem"
                bundle.write_text(system_bundle.read_text() + "\n" + trust)
                saved = os.environ.get("SSL_CERT_FILE")
                if sdk_trust is None:
                    os.environ["SSL_CERT_FILE"] = str(bundle)
                try:
                    connect_s, sdk_kb, send_s, acked = _sdk_fleet(
                        dps, sdk_trust, devices, Path(folder) / "files", args.messages
                    )
                finally:
                    if saved is None:
                        os.environ.pop("SSL_CERT_FILE", None)
                    else:
                        os.environ["SSL_CERT_FILE"] = saved
                rows.append((name, len(devices), len(devices) / connect_s, sdk_kb, acked / send_s))

    pacing = "default" if args.poll_retry_after is None else f"{args.poll_retry_after} s"
    print("Fleets: provision through DPS, connect to the assigned hub (2 hubs), send telemetry")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs; emulator in its own "
        f"process, DPS retry-after {pacing}; {args.messages} messages per device, QoS 1"
    )
    print()
    header = f"{'fleet':50} {'devices':>8} {'devices/s':>10} {'KB/device':>10} {'msgs/s':>10}"
    print(header)
    for name, count, rate, kb, msgs in rows:
        print(f"{name:50} {count:8d} {rate:10.1f} {kb:10.1f} {msgs:10.0f}")
    print(f"\n{report.summary()}")
    print(f"most devices waiting for a DPS poll at once, holding no slot: {report.peak_waiting:,}")
    (_, _, r1, m1, t1), *sdk_rows = rows
    for name, _, r2, m2, t2 in sdk_rows:
        print(
            f"\nratio dpskit / SDK ({name.split(', ')[1]}): {r1 / r2:.1f}x devices per second, "
            f"{m2 / max(m1, 0.001):.1f}x less memory per device, {t1 / t2:.1f}x messages per second"
        )
    if sdk_note:
        print(f"\nofficial SDK not measured: {sdk_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
