"""Provisioning throughput: dpskit's Rust DPS client vs the official azure-iot-device SDK, both
against the embedded emulator, in one run.

Each provisioning is complete: TCP + TLS handshake with the device's X.509 chain, MQTT CONNECT,
SUBSCRIBE, register (202 assigning), status poll, 200 assigned, and the hub identity stored in
SQLite. Run: ``python tests/benchmarks/bench_provisioning.py [--devices N] [--sdk-devices M]``.

The emulator answers polls with ``retry-after=0`` ("fast mode"). The official SDK still waits
its fixed 2 s before the first poll, so its rate comes from running many devices in threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpskit


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _sdk_register(
    dps: dpskit.Dps, device: dpskit.DeviceCertificate, folder: Path, trust: str
) -> str:
    from azure.iot.device import X509, ProvisioningDeviceClient

    files = device.save(folder)
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.device_endpoint,
        registration_id=device.registration_id,
        id_scope=dps.id_scope,
        x509=X509(  # type: ignore[no-untyped-call]
            cert_file=str(files["chain"]), key_file=str(files["private_key"])
        ),
        server_verification_cert=trust,
    )
    result = client.register()
    return str(result.status)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=3000, help="devices for dpskit")
    parser.add_argument("--concurrency", type=int, default=64, help="dpskit devices in flight")
    parser.add_argument("--sdk-devices", type=int, default=60, help="devices for the SDK")
    parser.add_argument("--sdk-threads", type=int, default=60, help="SDK devices in flight")
    args = parser.parse_args(argv)

    port = 8883 if _port_free(8883) else 0
    rows: list[tuple[str, int, float]] = []
    with dpskit.LocalCloud(port=port, poll_retry_after=0) as cloud:
        dps = cloud.create_dps("bench-dps")
        for name in ("bench-hub-1", "bench-hub-2"):
            cloud.link_hub(dps, cloud.create_hub(name))
        root = dpskit.CertificateAuthority.create_root("Bench Root")
        inter = root.create_intermediate("Bench Intermediate")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("bench", ca_reference="root")
        devices = inter.issue_devices([f"bench-{i:06d}" for i in range(args.devices)])

        start = time.perf_counter()
        outcomes = dpskit.provision_devices(dps, devices, concurrency=args.concurrency)
        elapsed = time.perf_counter() - start
        failed = [o for o in outcomes if not o.ok]
        if failed:
            print(f"dpskit: {len(failed)} failures, first: {failed[0].error}", file=sys.stderr)
        rows.append(
            (
                f"dpskit provision_devices ({args.concurrency} in flight)",
                len(outcomes) - len(failed),
                elapsed,
            )
        )
        latencies = sorted(o.seconds for o in outcomes)

        sdk_note = ""
        try:
            import azure.iot.device  # noqa: F401
        except ImportError:
            sdk_note = "azure-iot-device is not installed"
        if port != 8883:
            sdk_note = "port 8883 is taken (the SDK cannot dial another port)"
        if not sdk_note and args.sdk_devices > 0:
            sdk_devices = inter.issue_devices([f"sdk-{i:05d}" for i in range(args.sdk_devices)])
            with (
                tempfile.TemporaryDirectory() as folder,
                ThreadPoolExecutor(args.sdk_threads) as pool,
            ):
                start = time.perf_counter()
                statuses = list(
                    pool.map(
                        lambda d: _sdk_register(dps, d, Path(folder), cloud.trust_pem), sdk_devices
                    )
                )
                elapsed = time.perf_counter() - start
            ok = sum(s == "assigned" for s in statuses)
            rows.append((f"azure-iot-device 2.x ({args.sdk_threads} threads)", ok, elapsed))

    print("DPS provisioning benchmark (X.509 group, full chain, TLS + MQTT, against the emulator)")
    cpus = os.cpu_count()
    print(f"  python {platform.python_version()}, {cpus} CPUs, emulator + clients in one process")
    print()
    print(f"{'client':52} {'provisioned':>11} {'seconds':>9} {'per second':>11}")
    for name, count, seconds in rows:
        print(f"{name:52} {count:11d} {seconds:9.2f} {count / seconds:11.1f}")
    if latencies:
        p50, p95, p99 = (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
            for q in (0.5, 0.95, 0.99)
        )
        print(f"\ndpskit latency per device: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
    if len(rows) == 2:
        ratio = (rows[0][1] / rows[0][2]) / (rows[1][1] / rows[1][2])
        print(f"ratio dpskit / official SDK: {ratio:.1f}x")
    elif sdk_note:
        print(f"\nofficial SDK not measured: {sdk_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
