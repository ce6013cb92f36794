"""``dpskit demo``: the DPS X.509 walkthrough end to end (hub and DPS, a root and an
intermediate CA, proof of possession, an enrollment group, devices provisioned through DPS
and sending telemetry), against the embedded local cloud or, with ``--azure``, real Azure."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dpskit._native import EMULATOR_CA_FILE, CertificateAuthority, DeviceCertificate, verify_chain
from dpskit.cli.argtypes import _add_algorithm, positive_int
from dpskit.cli.files import _verification_file
from dpskit.cli.output import _display, _Formatter, _print_fields, _utc
from dpskit.cli.targets import add_azure_options, azure_cloud
from dpskit.errors import DpsKitError

DEFAULT_DEMO_DIR = "dpskit-demo"


@contextlib.contextmanager
def _demo_cloud(args: argparse.Namespace, cloud_dir: Path) -> Iterator[tuple[Any, str]]:
    """The demo's cloud and the suffix of its resource names: the embedded emulator (fresh
    state in DIR/cloud), or Azure, where names must be unique worldwide and what the demo
    creates is deleted at the end unless ``--keep``."""
    import secrets
    import shutil

    from dpskit.cloud import LocalCloud

    if not args.azure:
        # A rerun starts from a fresh cloud: the demo's state is its output, not user data.
        shutil.rmtree(cloud_dir, ignore_errors=True)
        with LocalCloud(cloud_dir, port=args.port, poll_retry_after=0) as cloud:
            yield cloud, ""
        return
    azure = azure_cloud(args)
    suffix = f"-{secrets.token_hex(3)}"
    try:
        yield azure, suffix
    finally:
        if args.keep:
            print(f"\nKept on Azure (they cost money): demo-hub{suffix}, demo-dps{suffix}")
        else:
            print("\nDeleting what the demo created on Azure ...")
            for delete, name in (
                (azure.delete_dps, f"demo-dps{suffix}"),
                (azure.delete_hub, f"demo-hub{suffix}"),
            ):
                try:
                    delete(name)
                    print(f"  deleted {name}")
                except DpsKitError as error:
                    print(f"  could not delete {name}: {error}", file=sys.stderr)


class _Steps:
    """The demo's numbered steps: ``step(n, title)`` prints the heading and the time the
    previous step took; :meth:`finish` prints the last one's."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._started = time.perf_counter()
        self._step_started = self._started

    def __call__(self, number: int, title: str) -> None:
        if number > 1:
            self.finish()
        self._step_started = time.perf_counter()
        print(f"\n[{number}/{self._count}] {title}")

    def finish(self) -> None:
        """Prints how long the current step took."""
        print(f"  ({(time.perf_counter() - self._step_started) * 1000:.0f} ms)")

    @property
    def total(self) -> float:
        """Seconds since the demo started."""
        return time.perf_counter() - self._started


def cmd_demo(args: argparse.Namespace) -> int:
    """``dpskit demo``: the DPS X.509 walkthrough end to end, against the embedded emulator or
    (``--azure``) real Azure; ``--csr``: certificates issued by DPS, on the emulator."""
    if args.csr:
        return _csr_demo(args)
    from dpskit.cloud import LocalCloud
    from dpskit.provisioning import provision_devices

    base = Path(args.dir)
    certs = base / "certs"
    devices_dir = certs / "devices"
    verification_dir = certs / "verification"
    cloud_dir = base / "cloud"
    step = _Steps(9)

    where = "Azure" if args.azure else "the embedded local cloud"
    print(f"dpskit demo: the Azure DPS X.509 walkthrough against {where}")
    _print_fields([("folder", _display(base)), ("algorithm", args.algorithm)])

    with _demo_cloud(args, cloud_dir) as (cloud, suffix):
        local = isinstance(cloud, LocalCloud)
        wait = "" if local else " (a few minutes on Azure)"
        step(1, f"Create an IoT hub and a DPS instance, and link them{wait}")
        hub = cloud.create_hub(f"demo-hub{suffix}", args.location)
        dps = cloud.create_dps(f"demo-dps{suffix}", args.location)
        cloud.link_hub(dps, hub)
        trust = (
            f"{_display(cloud_dir / EMULATOR_CA_FILE)} (the emulator's CA)"
            if local
            else (args.trust_file or "the system's trusted roots")
        )
        _print_fields(
            [
                ("hub", f"{hub.name} at {hub.host_name}"),
                ("dps", f"{dps.name}, ID scope {dps.id_scope}, endpoint {dps.device_endpoint}"),
                ("trust", trust),
            ]
        )

        step(2, "Root CA (self-signed)")
        root = CertificateAuthority.create_root("dpskit Demo Root CA", algorithm=args.algorithm)
        root.save(certs, name="root")
        _print_fields(
            [
                ("subject", root.certificate.subject),
                ("thumbprint", root.certificate.thumbprint_sha1),
                ("valid until", _utc(root.certificate.not_after)),
            ]
        )

        step(3, "Intermediate CA (signed by the root; it signs the devices)")
        intermediate = root.create_intermediate(
            "dpskit Demo Intermediate CA", algorithm=args.algorithm
        )
        intermediate.save(certs, name="intermediate")
        _print_fields(
            [
                ("subject", intermediate.certificate.subject),
                ("issuer", intermediate.certificate.issuer),
                ("path length", intermediate.certificate.path_length),
            ]
        )

        step(4, "Upload both CAs to DPS and prove possession of each")
        verification_dir.mkdir(parents=True, exist_ok=True)
        for name, ca in (("root", root), ("intermediate", intermediate)):
            uploaded = dps.upload_ca_certificate(name, ca)
            code = dps.generate_verification_code(name)
            verification = ca.create_verification_certificate(code)
            path = verification.save(_verification_file(verification_dir, name))
            verified = dps.verify_certificate(name, verification)
            _print_fields(
                [
                    (name, f"uploaded, verified={uploaded.is_verified}"),
                    ("  code", code),
                    ("  signed", f"{_display(path)} (CN = code, signed by the {name} CA)"),
                    ("  now", f"verified={verified.is_verified}"),
                ]
            )

        step(5, "Enrollment group on the intermediate CA")
        group = dps.create_enrollment_group(
            "demo-devices", ca_reference="intermediate", allocation_policy="hashed", hubs=[hub]
        )
        _print_fields(
            [
                ("group", group.enrollment_group_id),
                ("attestation", f"X.509, CA reference '{group.ca_references[0]}'"),
                ("allocation", f"{group.allocation_policy} over {', '.join(group.iot_hubs)}"),
            ]
        )

        count = args.devices
        step(6, f"{count} device certificates (CN = registration id, full chain, PFX)")
        ids = [f"demo-device-{number:03d}" for number in range(1, count + 1)]
        devices = intermediate.issue_devices(
            ids, algorithm=args.algorithm, output_dir=devices_dir, pkcs12_password=""
        )
        _print_fields(
            [
                (device.registration_id, f"serial {device.certificate.serial_number}")
                for device in devices
            ]
        )
        for device in devices:
            chain = verify_chain(
                device.certificate,
                [cert for cert in device.issuers if not cert.is_self_signed],
                [root.certificate],
            )
            names = " -> ".join(cert.common_name or cert.subject for cert in chain)
            _print_fields([(device.registration_id, f"chain OK ({names})")])

        step(7, "Provision the devices through DPS (TLS with the device chain, MQTT)")
        if local:
            cloud.trace(ids[0])
        outcomes = provision_devices(dps, devices)
        for outcome in outcomes:
            result = (
                f"assigned to {outcome.assigned_hub} as {outcome.device_id} "
                f"({outcome.substatus}, {outcome.seconds * 1000:.0f} ms)"
                if outcome.ok
                else f"failed: {outcome.error}"
            )
            _print_fields([(outcome.registration_id, result)])
        if local:
            print(f"\n  The exchange of {ids[0]}, as the emulator recorded it:")
            for event in cloud.trace_events(ids[0]):
                status = f" {event.status}" if event.status is not None else ""
                topic = f" {event.topic}" if event.topic else ""
                print(f"    {event.direction:14} {event.kind}{status}{topic}")
            identities = hub.devices()
            print(f"\n  {hub.name} now holds {len(identities)} X.509 (thumbprint) identities.")

        step(8, "Each device connects to its hub with its certificate and sends telemetry")
        sent = asyncio.run(_demo_telemetry(cloud, outcomes, devices))
        if local:
            # The emulator can show what its hub stored; on Azure that takes a consumer of
            # the hub's Event Hubs endpoint, and the acknowledgements above are the proof.
            for outcome in outcomes:
                if outcome.ok:
                    received = len(hub.telemetry(outcome.device_id))
                    _print_fields(
                        [(outcome.registration_id, f"{received} messages stored by the hub")]
                    )

        step(9, "Files written (private keys and .pfx files readable by the owner only)")
        for line in _summarize_files(certs):
            print(f"  {line}")
        if local:
            print(f"  {_display(cloud_dir)}/: the local cloud's state and CA (reused on a rerun)")

    step.finish()
    print("\nSummary")
    print(f"  {'device':18} {'assigned hub':14} {'status':10} {'messages':>8}")
    for outcome in outcomes:
        hub_host = outcome.assigned_hub or "-"
        status = "assigned" if outcome.ok else "failed"
        messages = sent.get(outcome.registration_id, 0)
        print(f"  {outcome.registration_id:18} {hub_host:14} {status:10} {messages:8d}")
    failed = sum(not o.ok for o in outcomes) + sum(
        sent.get(o.registration_id, 0) != DEMO_MESSAGES for o in outcomes if o.ok
    )
    verdict = "Done" if not failed else "Failed"
    print(f"\n{verdict} in {step.total:.1f} s. Certificates and state: {_display(base)}")
    return 1 if failed else 0


#: Messages each demo device sends.
DEMO_MESSAGES = 3

#: The demo policy's certificate validity, in days (Azure's default).
CSR_DEMO_VALIDITY_DAYS = 30
#: Days the demo lets pass before the devices renew: the renewed certificates then outlive the
#: first ones, and moving past the first expiry shows both.
CSR_DEMO_RENEW_AFTER_DAYS = 20


def _csr_demo(args: argparse.Namespace) -> int:
    """``dpskit demo --csr``: certificate management (preview) on the embedded local cloud. A
    Device Registry namespace and policy, devices onboarding with a symmetric key and a CSR,
    DPS issuing their certificates, the hub trusting the policy's CA, renewal through the hub,
    then the cloud's clock moved past the first certificates' expiry: the old ones are refused,
    the renewed ones connect, and re-provisioning issues fresh ones."""
    import shutil

    from dpskit.cloud import LocalCloud

    if args.azure:
        print(
            "dpskit demo --csr runs on the embedded local cloud only: it moves the cloud's "
            "clock to show expiry, which Azure cannot do",
            file=sys.stderr,
        )
        return 2
    base = Path(args.dir)
    cloud_dir = base / "cloud"
    issued_dir = base / "certs" / "issued"
    step = _Steps(8)

    print("dpskit demo --csr: certificates issued by DPS (certificate management, preview)")
    _print_fields([("folder", _display(base)), ("key algorithm", "ec-p256 (the devices' CSRs)")])
    shutil.rmtree(cloud_dir, ignore_errors=True)
    failures = 0
    with LocalCloud(cloud_dir, port=args.port, poll_retry_after=0) as cloud:
        step(1, "Create an IoT hub and a DPS instance, and link them")
        hub = cloud.create_hub("demo-hub")
        dps = cloud.create_dps("demo-dps")
        cloud.link_hub(dps, hub)
        _print_fields([("hub", hub.host_name), ("dps", f"ID scope {dps.id_scope}")])

        step(2, "Device Registry namespace (root CA) and a policy (issuing CA), linked to both")
        namespace = cloud.create_device_registry_namespace("demo-ns")
        policy = namespace.create_policy("demo-policy", validity_days=CSR_DEMO_VALIDITY_DAYS)
        cloud.link_namespace(dps, namespace)
        cloud.link_namespace(hub, namespace)
        _print_fields(
            [
                ("namespace", namespace.name),
                ("policy", f"{policy.name}, certificates valid {CSR_DEMO_VALIDITY_DAYS} days"),
            ]
        )

        step(3, "Enrollment group: symmetric-key onboarding, certificates from the policy")
        group = dps.create_enrollment_group(
            "demo-csr", symmetric_key=True, credential_policy=policy.name
        )
        assert group.primary_key is not None
        _print_fields([("group", f"{group.enrollment_group_id} (symmetric key)")])

        ids = [f"demo-csr-{number:03d}" for number in range(1, args.devices + 1)]
        step(4, f"{len(ids)} devices register with a CSR; DPS returns their certificates")
        results = asyncio.run(_csr_provision(cloud, dps, group.primary_key, ids))
        for result in results:
            issued = result.issued_certificate
            assert issued is not None
            path = issued.save(issued_dir, name=result.registration_id)
            chain = " -> ".join(c.common_name or c.subject for c in result.issued_chain)
            _print_fields(
                [
                    (result.registration_id, chain),
                    ("  valid until", _utc(issued.certificate.not_after)),
                    ("  saved", _display(next(iter(path.values())).parent)),
                ]
            )

        step(5, "Each device connects to its hub with its issued certificate")
        asyncio.run(_csr_telemetry(cloud, results))
        _print_fields([(r.registration_id, "connected, 1 message acknowledged") for r in results])

        step(6, f"{CSR_DEMO_RENEW_AFTER_DAYS} days later: each device renews through its hub")
        cloud.advance_time(days=CSR_DEMO_RENEW_AFTER_DAYS)
        renewed = asyncio.run(_csr_renew(cloud, results))
        for result, new in zip(results, renewed, strict=True):
            until = _utc(new.certificate.not_after)
            _print_fields([(result.registration_id, f"renewed, valid until {until}")])

        step(7, "Past the first certificates' expiry: old ones refused, renewed ones connect")
        now = cloud.advance_time(days=CSR_DEMO_VALIDITY_DAYS - CSR_DEMO_RENEW_AFTER_DAYS + 1)
        print(f"  the cloud's clock now reads {_utc(now)}")
        for result, new in zip(results, renewed, strict=True):
            old = asyncio.run(_csr_try(cloud, result, result.issued_certificate))
            fresh = asyncio.run(_csr_try(cloud, result, new))
            failures += int(old is None or fresh is not None)
            _print_fields(
                [
                    (result.registration_id, ""),
                    ("  old certificate", old or "connected (it should have expired)"),
                    ("  renewed one", fresh or "connected"),
                ]
            )

        step(8, "Re-provisioning with the onboarding key issues a fresh certificate")
        again = asyncio.run(_csr_provision(cloud, dps, group.primary_key, ids[:1]))[0]
        assert again.issued_certificate is not None
        _print_fields(
            [
                (
                    again.registration_id,
                    f"valid until {_utc(again.issued_certificate.certificate.not_after)}",
                )
            ]
        )
    step.finish()
    verdict = "Done" if not failures else "Failed"
    print(f"\n{verdict} in {step.total:.1f} s. Issued certificates: {_display(issued_dir)}")
    return 1 if failures else 0


async def _csr_provision(cloud: Any, dps: Any, group_key: str, ids: Sequence[str]) -> list[Any]:
    """Registers every device with a CSR (group-derived key), in the cloud's time."""
    from dpskit.device import provision

    return list(
        await asyncio.gather(
            *(
                provision(
                    dps.device_endpoint,
                    id_scope=dps.id_scope,
                    registration_id=registration_id,
                    group_key=group_key,
                    trust=cloud.trust_pem,
                    csr=True,
                    clock=cloud,
                )
                for registration_id in ids
            )
        )
    )


async def _csr_telemetry(cloud: Any, results: Sequence[Any]) -> None:
    """Connects each device with its issued certificate (the registration's, by default)."""
    from dpskit.device import HubClient

    async def run(result: Any) -> None:
        async with HubClient.connect(result, trust=cloud.trust_pem) as client:
            await client.send_telemetry({"certificate": "issued"})

    await asyncio.gather(*(run(r) for r in results))


async def _csr_renew(cloud: Any, results: Sequence[Any]) -> list[DeviceCertificate]:
    """Each device renews its certificate over its live hub connection."""
    from dpskit.device import HubClient

    async def renew(result: Any) -> DeviceCertificate:
        async with HubClient.connect(result, trust=cloud.trust_pem) as client:
            renewed: DeviceCertificate = await client.renew_certificate()
            return renewed

    return list(await asyncio.gather(*(renew(r) for r in results)))


async def _csr_try(cloud: Any, result: Any, certificate: DeviceCertificate | None) -> str | None:
    """Connects with ``certificate``; ``None`` when the hub took it, else why it refused."""
    from dpskit.device import HubClient
    from dpskit.errors import DpsKitError

    try:
        async with HubClient.connect(
            result, certificate=certificate, trust=cloud.trust_pem, timeout=10
        ):
            return None
    except DpsKitError as error:
        return f"refused ({type(error).__name__})"


async def _demo_telemetry(
    cloud: Any, outcomes: Sequence[Any], devices: Sequence[DeviceCertificate]
) -> dict[str, int]:
    """Connects every assigned device to its hub and sends a few readings; returns how many
    messages each got acknowledged."""
    from dpskit.device import HubClient

    by_id = {d.registration_id: d for d in devices}
    sent: dict[str, int] = {}

    async def run(outcome: Any) -> None:
        device = by_id[outcome.registration_id]
        result = outcome.result
        async with HubClient.connect(result, certificate=device, trust=cloud.trust_pem) as client:
            for reading in range(DEMO_MESSAGES):
                await client.send_telemetry(
                    {"temperature": round(21.0 + reading * 0.5, 1), "sequence": reading}
                )
                sent[outcome.registration_id] = reading + 1
        _print_fields([(outcome.registration_id, f"connected, {DEMO_MESSAGES} acknowledged")])

    await asyncio.gather(*(run(o) for o in outcomes if o.ok))
    return sent


_SUFFIX_ORDER = ("cert", "key", "chain", "fullchain")


def _summarize_files(base: Path) -> list[str]:
    """Files under ``base``, one line per name stem: ``root.{cert,key,chain,fullchain}.pem``."""
    folders: dict[Path, dict[str, list[str]]] = {}
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        stem, _, rest = path.name.partition(".")
        folders.setdefault(path.parent, {}).setdefault(stem, []).append(rest)
    lines: list[str] = []
    for folder in sorted(folders):
        lines.append(_display(folder) + "/")
        stems = folders[folder]
        # CAs in the order they are made, everything else alphabetically.
        for stem in sorted(stems, key=lambda s: (s != "root", s != "intermediate", s)):
            pem = sorted(
                (r.removesuffix(".pem") for r in stems[stem] if r.endswith(".pem")),
                key=lambda part: (_SUFFIX_ORDER.index(part) if part in _SUFFIX_ORDER else 9, part),
            )
            others = sorted(r for r in stems[stem] if not r.endswith(".pem"))
            names = []
            if len(pem) == 1:
                names.append(f"{stem}.{pem[0]}.pem")
            elif pem:
                names.append(f"{stem}.{{{','.join(pem)}}}.pem")
            for other in others:
                if not other:
                    names.append(stem)  # a file name without any dot
                else:
                    names.append(f".{other}" if names else f"{stem}.{other}")
            lines.append("  " + " + ".join(names))
    return lines


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dpskit demo``."""
    p = commands.add_parser(
        "demo",
        help="run the DPS X.509 walkthrough end to end (embedded emulator, or --azure)",
        description="Start the local cloud, create a hub and a DPS instance, a root and an\n"
        "intermediate CA, prove possession of both, create an enrollment group, issue N\n"
        "devices, provision them through DPS, connect each to its hub and send telemetry.\n"
        "Certificates and state stay in DIR.\n\n"
        "--azure runs the same steps on real Azure (charges apply): a hub and a DPS with\n"
        "unique names in the resource group, deleted at the end unless --keep. Credential:\n"
        "--token-env, else a service principal from AZURE_CLIENT_ID, AZURE_TENANT_ID and\n"
        "AZURE_CLIENT_SECRET, else `az login`.",
        formatter_class=_Formatter,
    )
    p.add_argument("--dir", default=DEFAULT_DEMO_DIR, help="output folder")
    p.add_argument(
        "--port", type=int, default=0, help="MQTT port of the local cloud (0: any free port)"
    )
    p.add_argument("--devices", type=positive_int, default=3, help="devices to provision")
    p.add_argument(
        "--csr",
        action="store_true",
        help="certificate management (preview) instead: a Device Registry namespace and policy, "
        "devices registering with a CSR, issued certificates, renewal through the hub, expiry "
        "(the embedded local cloud only)",
    )
    _add_algorithm(p, "key algorithm (rsa-4096 as in Azure's tutorial works, but is slower)")
    azure = p.add_argument_group("Azure (charges apply)")
    azure.add_argument("--azure", action="store_true", help="run the steps on real Azure")
    azure.add_argument("--location", default="westeurope", help="Azure region")
    azure.add_argument(
        "--keep", action="store_true", help="keep the hub and DPS instead of deleting them"
    )
    add_azure_options(azure)
    p.set_defaults(handler=cmd_demo, parser=p)
