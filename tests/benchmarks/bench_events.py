"""Reading a hub's telemetry from its Event Hub-compatible endpoint: dpskit's reader beside the
official consumer (``azure-eventhub``'s ``EventHubConsumerClient``), in one run, against the
hub's measured ingest rate.

One local cloud in this process; one hub with 4 partitions; ``--devices`` X.509 devices send
``--messages`` QoS 1 messages each through dpskit's Rust hub client (the ingest rate is what
the hub acknowledged per second, each message committed to SQLite). Then, from the same
retained events:

* dpskit ``hub.retained_events()``: every partition from its start to its last event;
* the official consumer, ``receive`` on every partition from ``"-1"`` until it has every event;
* dpskit ``hub.events(starting="latest")`` while a second burst is sent: events read per
  second during the burst, and whether the reader kept up (it read the burst's last event
  within a second of the hub acknowledging it).

Run: ``python tests/benchmarks/bench_events.py [--devices 100] [--messages 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dpskit
from dpskit._native import HubConnections

PARTITIONS = 4


def _official_read(cloud: dpskit.LocalCloud, hub: dpskit.Hub, trust: Path, total: int) -> float:
    """Seconds the official consumer takes to read ``total`` events from every partition."""
    from azure.eventhub import EventHubConsumerClient, TransportType

    client = EventHubConsumerClient.from_connection_string(
        hub.event_hub_connection_string,
        consumer_group="$Default",
        connection_verify=str(trust),
        custom_endpoint_address=f"sb://{hub.host_name}:{cloud.amqp_port}",
        transport_type=TransportType.Amqp,
    )
    seen = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_event_batch(_: Any, events: list[Any]) -> None:
        nonlocal seen
        with lock:
            seen += len(events)
            if seen >= total:
                done.set()

    began = time.perf_counter()
    reader = threading.Thread(
        target=client.receive_batch,
        kwargs={"on_event_batch": on_event_batch, "starting_position": "-1", "max_batch_size": 300},
        daemon=True,
    )
    reader.start()
    finished = done.wait(600)
    seconds = time.perf_counter() - began
    client.close()
    reader.join(30)
    if not finished:
        raise RuntimeError(f"the official consumer read {seen} of {total} events in 600 s")
    return seconds


async def _live(
    hub: dpskit.Hub, connections: HubConnections, messages: int, body: bytes, window: int
) -> tuple[int, float, float, float]:
    """Events read live during a burst, the burst's ingest seconds, the read seconds, and how
    long after the hub's last acknowledgement the reader had the last event."""
    expected = len(connections) * messages
    read = 0
    first_at = last_at = 0.0
    started = asyncio.Event()

    async def watch() -> None:
        nonlocal read, first_at, last_at
        events = hub.events(starting="latest")
        started.set()
        async for _ in events:
            now = time.perf_counter()
            first_at = first_at or now
            last_at = now
            read += 1
            if read >= expected:
                await events.aclose()
                return

    watcher = asyncio.create_task(watch())
    await started.wait()
    # The receivers attach before the burst, so "latest" means the burst.
    await asyncio.sleep(1.0)
    began = time.perf_counter()
    sent = await asyncio.to_thread(connections.send_telemetry, messages, body, window=window)
    acknowledged_at = time.perf_counter()
    if sent["acknowledged"] != expected:
        watcher.cancel()
        raise RuntimeError(f"the hub acknowledged {sent['acknowledged']} of {expected}")
    await asyncio.wait_for(watcher, 600)
    return read, acknowledged_at - began, last_at - began, max(0.0, last_at - acknowledged_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--messages", type=int, default=500, help="per device, per burst")
    parser.add_argument("--payload", type=int, default=256)
    parser.add_argument("--window", type=int, default=100, help="QoS 1 messages in flight")
    parser.add_argument("--no-official", action="store_true", help="skip azure-eventhub")
    args = parser.parse_args(argv)
    body = (b'{"temperature":21.5,"pad":"' + b"x" * args.payload)[: args.payload - 2] + b'"}'

    print("Events endpoint benchmark (built-in Event Hub-compatible endpoint, AMQP over TLS)")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs, emulator and readers in"
        f" one process; {args.devices} devices x {args.messages} messages of {len(body)} bytes,"
        f" {PARTITIONS} partitions"
    )
    with (
        tempfile.TemporaryDirectory() as folder,
        dpskit.LocalCloud(Path(folder) / "cloud", port=0, web_port=0, amqp_port=0) as cloud,
    ):
        hub = cloud.create_hub("events-bench", partition_count=PARTITIONS)
        root = dpskit.CertificateAuthority.create_root("Events Bench Root")
        devices = root.issue_devices([f"sender-{i:04}" for i in range(args.devices)])
        for device in devices:
            hub.create_device(device.registration_id, certificate=device.certificate)
        trust = Path(folder) / "ca.pem"
        trust.write_text(cloud.trust_pem)
        connections = HubConnections(cloud.trust_pem)
        try:
            report = connections.connect(hub.host_name, cloud.mqtt_port, devices)
            if report["failures"]["count"]:
                print(f"connect failures: {report['failures']}", file=sys.stderr)
                return 1
            sent = connections.send_telemetry(args.messages, body, window=args.window)
            total = int(sent["acknowledged"])
            ingest = total / sent["seconds"]

            began = time.perf_counter()
            retained = hub.retained_events()
            dpskit_seconds = time.perf_counter() - began
            if len(retained) != total:
                print(f"dpskit read {len(retained)} of {total}", file=sys.stderr)
                return 1
            official_seconds = (
                None if args.no_official else _official_read(cloud, hub, trust, total)
            )
            live = asyncio.run(_live(hub, connections, args.messages, body, args.window))
        finally:
            connections.close()

    read_live, burst_seconds, live_seconds, lag = live
    print()
    print(f"{'':46}{'events':>10}{'seconds':>10}{'events/s':>12}")
    ingest_seconds = sent["seconds"]
    print(
        f"{'hub ingest (QoS 1, acknowledged)':46}{total:>10}{ingest_seconds:>10.2f}{ingest:>12,.0f}"
    )
    dpskit_rate = total / dpskit_seconds
    print(f"{'dpskit retained_events()':46}{total:>10}{dpskit_seconds:>10.2f}{dpskit_rate:>12,.0f}")
    if official_seconds is not None:
        official_rate = total / official_seconds
        print(
            f"{'azure-eventhub receive_batch (pyamqp)':46}{total:>10}"
            f"{official_seconds:>10.2f}{official_rate:>12,.0f}"
        )
    burst_ingest = read_live / burst_seconds
    print(
        f"{'dpskit events(latest) during a burst':46}{read_live:>10}{live_seconds:>10.2f}"
        f"{read_live / live_seconds:>12,.0f}"
    )
    print()
    print(f"dpskit reader / hub ingest: {dpskit_rate / ingest:.2f}x")
    if official_seconds is not None:
        print(f"dpskit reader / official consumer: {dpskit_rate / official_rate:.2f}x")
    verdict = "kept up" if lag <= 1.0 else "fell behind"
    print(
        f"live: the burst was ingested at {burst_ingest:,.0f} events/s; the reader had its last"
        f" event {lag:.2f} s after the hub acknowledged it ({verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
