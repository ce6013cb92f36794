"""Certificates issued by DPS: X.509 provisioning with and without issuance, and renewals through
the hub, side by side in one run against the embedded emulator.

Every row is a complete exchange on real TLS + MQTT:

- *X.509, no issuance*: the device's chain in the TLS handshake, register, poll, assigned, the
  hub identity stored (what notebook 07 does).
- *X.509 + CSR*: the same, plus the device's new key and CSR, the CSR checked by DPS, a leaf
  signed by the policy's issuing CA, and the chain (leaf, issuing CA, root) checked by the
  device on its way back.
- *renewal through the hub*: connected devices each send a new CSR on
  ``$iothub/credentials``; 202 then 200 with the new chain, checked.

Both provisioning rows go through the same client path (``dpskit.provision`` from asyncio, the
same concurrency), so their ratio is the cost of issuance. Run:
``python tests/benchmarks/bench_issuance.py [--devices N] [--renewals M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import dpskit

TABLE_HEADER = f"{'exchange':46} {'done':>6} {'failed':>6} {'seconds':>8} {'per second':>11}"


async def _run_all(
    items: Sequence[Any], work: Callable[[Any], Awaitable[Any]], concurrency: int
) -> tuple[list[Any], int, float]:
    """Runs ``work`` over ``items``, ``concurrency`` at a time; returns the results, the failures
    and the seconds taken."""
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(item: Any) -> Any:
        nonlocal failures
        async with gate:
            try:
                return await work(item)
            except dpskit.DpsKitError as error:
                if failures == 0:
                    print(f"  first failure: {error}", file=sys.stderr)
                failures += 1
                return None

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in items))
    return [r for r in results if r is not None], failures, time.perf_counter() - start


async def _bench(args: argparse.Namespace) -> list[tuple[str, int, int, float]]:
    rows: list[tuple[str, int, int, float]] = []
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("bench-issuing-hub")
        dps = cloud.create_dps("bench-issuing-dps")
        cloud.link_hub(dps, hub)
        namespace = cloud.create_device_registry_namespace("bench-ns", "westeurope")
        namespace.create_policy("bench-policy", validity_days=30)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        root = dpskit.CertificateAuthority.create_root("Bench Bootstrap Root")
        inter = root.create_intermediate("Bench Bootstrap Intermediate")
        dps.prove_possession("bootstrap", root)
        # Two groups on the same CA would be ambiguous: each kind of device has its own
        # intermediate under its own verified root.
        issuing_root = dpskit.CertificateAuthority.create_root("Bench Issuing Bootstrap Root")
        issuing_inter = issuing_root.create_intermediate("Bench Issuing Bootstrap Intermediate")
        dps.prove_possession("issuing-bootstrap", issuing_root)
        dps.create_enrollment_group("plain", ca_reference="bootstrap")
        dps.create_enrollment_group(
            "issuing", ca_reference="issuing-bootstrap", credential_policy="bench-policy"
        )
        plain = inter.issue_devices([f"plain-{i:06d}" for i in range(args.devices)])
        issuing = issuing_inter.issue_devices([f"issued-{i:06d}" for i in range(args.devices)])
        trust = cloud.trust_pem

        async def provision_plain(device: dpskit.DeviceCertificate) -> Any:
            return await dpskit.provision(
                dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=trust
            )

        async def provision_with_csr(device: dpskit.DeviceCertificate) -> Any:
            return await dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=trust,
                csr=True,
            )

        done, failed, seconds = await _run_all(plain, provision_plain, args.concurrency)
        rows.append(("X.509 provisioning, no issuance", len(done), failed, seconds))
        issued, failed, seconds = await _run_all(issuing, provision_with_csr, args.concurrency)
        rows.append(("X.509 provisioning + CSR (certificate issued)", len(issued), failed, seconds))

        clients = []
        for result in issued[: args.renewals]:
            clients.append(await dpskit.HubClient.connect(result, trust=trust))
        try:
            renewed, failed, seconds = await _run_all(
                clients, lambda c: c.renew_certificate(), args.concurrency
            )
            rows.append(
                ("renewal through the hub ($iothub/credentials)", len(renewed), failed, seconds)
            )
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000, help="devices per provisioning row")
    parser.add_argument("--renewals", type=int, default=500, help="devices that renew")
    parser.add_argument("--concurrency", type=int, default=64, help="exchanges in flight")
    args = parser.parse_args(argv)
    rows = asyncio.run(_bench(args))

    print(
        "Certificate issuance benchmark (EC P-256 devices, policy CA P-384, TLS + MQTT, emulator)"
    )
    print(f"  python {platform.python_version()}, {os.cpu_count()} CPUs, one process")
    print()
    print(TABLE_HEADER)
    for name, count, failed, seconds in rows:
        print(f"{name:46} {count:6d} {failed:6d} {seconds:8.2f} {count / seconds:11.1f}")
    rate = {name: count / seconds for name, count, _, seconds in rows}
    plain, issued, renewals = (rate[name] for name, *_ in rows)
    print(f"\nratio provisioning with issuance / without: {issued / plain:.2f}x")
    print(f"ratio renewals / provisioning with issuance: {renewals / issued:.2f}x")
    return 0 if all(failed == 0 for _, _, failed, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
