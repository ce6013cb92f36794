"""Device clients side by side, in one run: dpskit's async clients vs the official
azure-iot-device SDK, both provisioning X.509 devices through the emulator's DPS and then
holding them connected to the assigned hub.

The emulator runs in its own process (``dpskit emulator`` on port 8883, which the SDK needs), so
this process's memory growth is the clients' alone. Figures: devices provisioned and connected
per second (registration, status polls, TLS with the device chain, MQTT CONNECT and
subscriptions), and memory per connected device (RSS growth / devices).

Run: ``python tests/benchmarks/bench_device.py [--devices 1000] [--sdk-devices 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dpskit

SDK_PORT = 8883


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def emulator_port() -> tuple[int, str]:
    """The port for the emulator (8883, which the SDK always dials, when free, else any) and,
    when the SDK cannot be measured, why."""
    note = ""
    try:
        import azure.iot.device  # noqa: F401
    except ImportError:
        note = "azure-iot-device is not installed"
    if not _port_free(SDK_PORT):
        return 0, "port 8883 is taken (the SDK cannot dial another port)"
    return SDK_PORT, note


@contextlib.contextmanager
def emulator_process(state: Path, port: int, poll_retry_after: int | None = None) -> Iterator[Any]:
    """``dpskit emulator`` in its own process with its default settings (no wait between DPS
    polls) or DPS's ``poll_retry_after``, and the local cloud client attached to it; stopped on
    exit."""
    pacing = [] if poll_retry_after is None else ["--poll-retry-after", str(poll_retry_after)]
    with emulator_subprocess(state, port, *pacing) as (_, cloud):
        yield cloud


@contextlib.contextmanager
def emulator_subprocess(
    state: Path, port: int, *options: str
) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """``dpskit emulator`` in its own process with ``options`` added to its command line: the
    process (for its pid) and the local cloud client attached to it; stopped on exit."""
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpskit",
            "emulator",
            "--data-dir",
            str(state),
            "--port",
            str(port),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        cloud = None
        while cloud is None:
            if emulator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            cloud = dpskit.LocalCloud.attach(state)
            time.sleep(0.05)
        yield emulator, cloud
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=30)


async def _dpskit_fleet(
    dps: Any, trust: str, devices: list[dpskit.DeviceCertificate], concurrency: int
) -> tuple[list[dpskit.HubClient], float]:
    slots = asyncio.Semaphore(concurrency)

    async def one(device: dpskit.DeviceCertificate) -> dpskit.HubClient:
        async with slots:
            result = await dpskit.provision(
                dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=trust
            )
            return await dpskit.HubClient.connect(result, certificate=device, trust=trust)

    start = time.perf_counter()
    clients = await asyncio.gather(*(one(d) for d in devices))
    return list(clients), time.perf_counter() - start


def burst_plan(messages: int) -> dpskit.TelemetryPlan:
    """The fleet benchmarks' telemetry: ``messages`` per device, as fast as the hub
    acknowledges, a temperature and a humidity reading in each."""
    return dpskit.TelemetryPlan(
        interval=0.0,
        count=messages,
        fields={
            "temperature": dpskit.signals.sine(21.0, 3.0, period=86_400).rounded(2),
            "humidity": dpskit.signals.random_walk(45.0, 0.3, low=0, high=100).rounded(1),
        },
    )


def hashed_fleet(cloud: Any, label: str) -> tuple[Any, dpskit.CertificateAuthority]:
    """The fleet benchmarks' cloud side: two hubs behind one DPS with hashed allocation, a
    root and an intermediate CA proven to DPS, and one X.509 enrollment group on it. Returns
    the DPS and the intermediate."""
    hubs = [cloud.create_hub("bench-hub-1"), cloud.create_hub("bench-hub-2")]
    dps = cloud.create_dps("bench-dps")
    for hub in hubs:
        cloud.link_hub(dps, hub)
    root = dpskit.CertificateAuthority.create_root(f"Bench {label} Root")
    inter = root.create_intermediate(f"Bench {label} Intermediate")
    dps.prove_possession("inter", inter)
    dps.create_enrollment_group(
        "bench", ca_reference="inter", allocation_policy="hashed", hubs=hubs
    )
    return dps, inter


def _sdk_device(dps: Any, trust: str | None, device: dpskit.DeviceCertificate, folder: Path) -> Any:
    from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient

    files = device.save(folder)
    x509 = X509(cert_file=str(files["chain"]), key_file=str(files["private_key"]))  # type: ignore[no-untyped-call]
    registration = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.device_host,
        registration_id=device.registration_id,
        id_scope=dps.id_scope,
        x509=x509,
        server_verification_cert=trust,
    ).register()
    state = registration.registration_state
    assert state is not None, registration.status
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=trust,
    )
    client.connect()
    return client


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000, help="devices for dpskit")
    parser.add_argument("--concurrency", type=int, default=64, help="dpskit devices in flight")
    parser.add_argument("--sdk-devices", type=int, default=50, help="devices for the SDK")
    args = parser.parse_args(argv)

    port, sdk_note = emulator_port()

    rows: list[tuple[str, int, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="dpskit-bench-device-") as folder,
        emulator_process(Path(folder) / "cloud", port) as cloud,
    ):
        hub = cloud.create_hub("bench-hub")
        dps = cloud.create_dps("bench-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Bench Device Root")
        inter = root.create_intermediate("Bench Device Intermediate")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("bench", ca_reference="root")
        trust = cloud.trust_pem

        devices = inter.issue_devices([f"dk-{i:06d}" for i in range(args.devices)])
        before = _rss_kb()

        async def dpskit_run() -> tuple[int, float, float]:
            clients, seconds = await _dpskit_fleet(dps, trust, devices, args.concurrency)
            grown = (_rss_kb() - before) / len(clients)
            for client in clients:
                await client.close()
            return len(clients), seconds, grown

        count, seconds, per_device = asyncio.run(dpskit_run())
        rows.append(("dpskit provision + HubClient.connect", count, seconds, per_device))

        if not sdk_note and args.sdk_devices > 0:
            sdk_devices = inter.issue_devices([f"sdk-{i:05d}" for i in range(args.sdk_devices)])
            files = Path(folder) / "files"
            before = _rss_kb()
            start = time.perf_counter()
            with ThreadPoolExecutor(args.sdk_devices) as pool:
                clients = list(pool.map(lambda d: _sdk_device(dps, trust, d, files), sdk_devices))
            seconds = time.perf_counter() - start
            per_device = (_rss_kb() - before) / len(clients)
            rows.append(
                (
                    "azure-iot-device 2.x (a thread per device)",
                    len(clients),
                    seconds,
                    per_device,
                )
            )
            for client in clients:
                client.shutdown()

    print("Device clients: provision through DPS, then connect to the assigned hub (X.509)")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs; emulator in its own process"
    )
    print()
    print(f"{'client':46} {'devices':>8} {'seconds':>8} {'devices/s':>10} {'KB/device':>10}")
    for name, count, seconds, per_device in rows:
        print(f"{name:46} {count:8d} {seconds:8.2f} {count / seconds:10.1f} {per_device:10.1f}")
    if len(rows) == 2:
        (_, n1, s1, m1), (_, n2, s2, m2) = rows
        print(
            f"\nratio dpskit / SDK: {(n1 / s1) / (n2 / s2):.1f}x devices per second, "
            f"{m2 / max(m1, 0.001):.1f}x less memory per device"
        )
    elif sdk_note:
        print(f"\nofficial SDK not measured: {sdk_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
