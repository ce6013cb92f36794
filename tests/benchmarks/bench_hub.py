"""IoT Hub emulator vs mosquitto, side by side in one run: idle connections and their memory,
then durable QoS 1 telemetry ingest.

Both servers run as their own processes, so their memory is measured alone (VmRSS from
/proc). Both get the same clients from the same load generator (dpskit's Rust hub client, one
task per device, in this process) with the same EC P-256 device certificates:

* the emulator: ``python -m dpskit emulator`` on a prepared state folder, devices registered
  in the hub by thumbprint. A PUBACK means the message is committed to SQLite (WAL), which the
  run proves by killing the emulator with SIGKILL and counting the stored messages afterwards.
* mosquitto (Debian): TLS with required client certificates checked against the device CA,
  ``use_identity_as_username``, ``persistence true``, ``set_tcp_nodelay true``. It is the
  ceiling users know for a broker on this machine; note that it keeps nothing of a QoS 1
  message nobody subscribed to and snapshots its state to disk only every 30 minutes.

The emulator runs twice: MQTT over TLS on its MQTT port, then MQTT over WebSockets on its web
port (``wss://host/$iothub/websocket``, as devices behind firewalls use it), so the cost of the
WebSocket framing shows as a ratio of the same load in the same run.

Run: ``python tests/benchmarks/bench_hub.py [--idle 10000] [--senders 100] [--messages 2000]
[--no-websockets]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dpskit
from dpskit._native import HubConnections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{what} exited with status {process.returncode}: {err}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within 60 s")


def _raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class ServerRun:
    """What one server did under the same load."""

    name: str
    idle_connected: int = 0
    idle_failures: int = 0
    connect_seconds: float = 0.0
    connect_p50_ms: float = 0.0
    connect_p99_ms: float = 0.0
    server_kb_before: int = 0
    server_kb_idle: int = 0
    client_kb_per_connection: float = 0.0
    sent: int = 0
    acknowledged: int = 0
    send_failures: int = 0
    send_seconds: float = 0.0
    stored_after_sigkill: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def server_kb_per_connection(self) -> float:
        if not self.idle_connected:
            return 0.0
        return (self.server_kb_idle - self.server_kb_before) / self.idle_connected

    @property
    def messages_per_second(self) -> float:
        return self.acknowledged / self.send_seconds if self.send_seconds else 0.0


def _rate(run: ServerRun) -> float:
    """Idle connections opened per second."""
    return run.idle_connected / run.connect_seconds if run.connect_seconds else 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def _drive(
    run: ServerRun,
    server_pid: int,
    host: str,
    port: int,
    trust_pem: str,
    idle: list[dpskit.DeviceCertificate],
    senders: list[dpskit.DeviceCertificate],
    args: argparse.Namespace,
    transport: str = "mqtt",
) -> None:
    """The same load against either server: idle connections, then the telemetry stream."""
    body = (b'{"temperature":21.5,"humidity":40,"pad":"' + b"x" * args.payload)[: args.payload]
    body = body.ljust(args.payload, b"x")
    time.sleep(0.5)
    run.server_kb_before = _rss_kb(server_pid)
    own_before = _rss_kb(os.getpid())
    connections = HubConnections(trust_pem)
    try:
        report = connections.connect(
            host,
            port,
            idle,
            concurrency=args.concurrency,
            max_in_flight=1,
            keep_alive=300,
            transport=transport,
        )
        run.idle_connected = report["connected"]
        run.idle_failures = report["failures"]["count"]
        if run.idle_failures:
            run.notes.append(f"first idle failure: {report['failures']['first'][0]['error']}")
        run.connect_seconds = report["seconds"]
        run.connect_p50_ms = _percentile(report["latencyMs"], 0.5)
        run.connect_p99_ms = _percentile(report["latencyMs"], 0.99)
        time.sleep(1.0)
        run.server_kb_idle = _rss_kb(server_pid)
        if run.idle_connected:
            run.client_kb_per_connection = (_rss_kb(os.getpid()) - own_before) / run.idle_connected

        active = HubConnections(trust_pem)
        try:
            report = active.connect(
                host, port, senders, concurrency=args.concurrency, transport=transport
            )
            if report["failures"]["count"]:
                run.notes.append(f"first sender failure: {report['failures']['first'][0]['error']}")
            sent = active.send_telemetry(args.messages, body, window=args.window)
            run.sent = sent["sent"]
            run.acknowledged = sent["acknowledged"]
            run.send_failures = sent["failures"]["count"]
            run.send_seconds = sent["seconds"]
            if run.send_failures:
                run.notes.append(f"first send failure: {sent['failures']['first'][0]['error']}")
        finally:
            active.close()
    finally:
        connections.close()


def _emulator_run(
    folder: Path,
    idle: list[dpskit.DeviceCertificate],
    senders: list[dpskit.DeviceCertificate],
    args: argparse.Namespace,
    transport: str = "mqtt",
) -> ServerRun:
    websockets = transport == "websockets"
    run = ServerRun("dpskit emulator, WebSockets" if websockets else "dpskit emulator")
    state = folder / ("emulator-ws" if websockets else "emulator")
    port = _free_port()
    web_port = _free_port()
    with dpskit.LocalCloud(state, port=port) as cloud:
        hub = cloud.create_hub("bench-hub")
        for device in [*idle, *senders]:
            hub.create_device(device.registration_id, certificate=device.certificate)
        host = hub.host_name
    trust_pem = (state / "emulator-ca.cert.pem").read_text()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpskit",
            "emulator",
            "--data-dir",
            str(state),
            "--port",
            str(port),
            "--web-port",
            str(web_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        dial = web_port if websockets else port
        _wait_for_port(host, dial, process, "the emulator")
        _drive(run, process.pid, host, dial, trust_pem, idle, senders, args, transport)
    finally:
        # SIGKILL, not a clean stop: what was acknowledged must already be on disk.
        process.send_signal(signal.SIGKILL)
        process.wait()
    with dpskit.LocalCloud(state, port=0) as cloud:
        stored = cloud.hub("bench-hub").telemetry()
        ids = {d.registration_id for d in senders}
        run.stored_after_sigkill = sum(1 for m in stored if m.device_id in ids)
    return run


def _mosquitto_run(
    mosquitto: str,
    folder: Path,
    device_ca_pem: str,
    idle: list[dpskit.DeviceCertificate],
    senders: list[dpskit.DeviceCertificate],
    args: argparse.Namespace,
) -> ServerRun:
    usage = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout
    version = re.search(r"mosquitto version (\S+)", usage)
    run = ServerRun(f"mosquitto {version.group(1)}" if version else "mosquitto")
    broker = folder / "mosquitto"
    broker.mkdir()
    # The tests' loopback server credentials (pyca/cryptography, as mosquitto's peer).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stand_in import server_credentials

    cert, key, trust_pem = server_credentials(broker)
    cafile = broker / "device-ca.pem"
    cafile.write_text(device_ca_pem)
    port = _free_port()
    conf = broker / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                # Run as root, mosquitto would switch to its own user, who cannot read our files.
                *(["user root"] if os.geteuid() == 0 else []),
                "persistence true",
                f"persistence_location {broker}/",
                "log_dest none",
                "set_tcp_nodelay true",
                "max_connections -1",
                "allow_anonymous false",
                f"listener {port} 127.0.0.1",
                f"cafile {cafile}",
                f"certfile {cert}",
                f"keyfile {key}",
                "require_certificate true",
                "use_identity_as_username true",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_port("127.0.0.1", port, process, "mosquitto")
        _drive(run, process.pid, "127.0.0.1", port, trust_pem, idle, senders, args)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return run


def _report(runs: list[ServerRun], args: argparse.Namespace) -> None:
    print("IoT Hub device-side benchmark: idle connections and durable QoS 1 telemetry")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs; load generator: dpskit's "
        "Rust hub client in this process; servers in their own processes"
    )
    print(
        f"  idle: {args.idle} X.509 devices (EC P-256, full chain, TLS + MQTT CONNECT); "
        f"telemetry: {args.senders} devices x {args.messages} x {args.payload} B, "
        f"window {args.window}"
    )
    print()
    width = max(len(r.name) for r in runs)
    header = (
        f"{'server':{width}} {'idle conns':>10} {'conn/s':>8} {'p99 ms':>7} "
        f"{'KB/conn':>8} {'msgs acked':>10} {'msgs/s':>9} {'stored':>8}"
    )
    print(header)
    for r in runs:
        stored = "-" if r.stored_after_sigkill is None else str(r.stored_after_sigkill)
        rate = r.idle_connected / r.connect_seconds if r.connect_seconds else 0.0
        print(
            f"{r.name:{width}} {r.idle_connected:10d} {rate:8.0f} {r.connect_p99_ms:7.1f} "
            f"{r.server_kb_per_connection:8.1f} {r.acknowledged:10d} "
            f"{r.messages_per_second:9.0f} {stored:>8}"
        )
    print()
    for r in runs:
        print(
            f"{r.name}: server RSS {r.server_kb_before / 1024:.1f} -> "
            f"{r.server_kb_idle / 1024:.1f} MB with {r.idle_connected} idle connections; "
            f"load generator {r.client_kb_per_connection:.1f} KB per client connection"
        )
        for note in r.notes:
            print(f"  note: {note}")
    over_tls = next((r for r in runs if r.name == "dpskit emulator"), None)
    over_ws = next((r for r in runs if r.name == "dpskit emulator, WebSockets"), None)
    if over_tls and over_ws and over_tls.messages_per_second:
        memory = over_ws.server_kb_per_connection / max(over_tls.server_kb_per_connection, 0.001)
        print(
            f"\nratio WebSockets / TLS (the emulator, same load): telemetry "
            f"{over_ws.messages_per_second / over_tls.messages_per_second:.2f}x, connections "
            f"per second {_rate(over_ws) / max(_rate(over_tls), 0.001):.2f}x, memory per idle "
            f"connection {memory:.2f}x"
        )
    broker = next((r for r in runs if r.name.startswith("mosquitto")), None)
    if over_tls and broker and over_tls.messages_per_second and broker.messages_per_second:
        telemetry = over_tls.messages_per_second / broker.messages_per_second
        memory = over_tls.server_kb_per_connection / max(broker.server_kb_per_connection, 0.001)
        print(
            f"\nratio emulator / mosquitto: telemetry {telemetry:.2f}x, "
            f"memory per idle connection {memory:.2f}x"
        )
    for emulator in (r for r in (over_tls, over_ws) if r is not None):
        if emulator.stored_after_sigkill is None:
            continue
        lost = emulator.acknowledged - emulator.stored_after_sigkill
        print(
            f"durability ({emulator.name}): killed with SIGKILL after the run; "
            f"{emulator.stored_after_sigkill} of {emulator.acknowledged} acknowledged messages "
            f"stored ({lost} lost)"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 if a server lost acknowledged messages."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=10_000, help="idle devices to hold")
    parser.add_argument("--senders", type=int, default=100, help="devices sending telemetry")
    parser.add_argument("--messages", type=int, default=2_000, help="messages per sender")
    parser.add_argument("--payload", type=int, default=256, help="message body bytes")
    parser.add_argument("--window", type=int, default=100, help="unacknowledged per sender")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    parser.add_argument("--no-mosquitto", action="store_true", help="measure the emulator only")
    parser.add_argument(
        "--no-websockets", action="store_true", help="skip the emulator's WebSockets run"
    )
    args = parser.parse_args(argv)

    # Each connection is a file descriptor in the server and one here.
    limit = _raise_open_file_limit()
    needed = args.idle + args.senders + 256
    if needed > limit:
        print(f"open-file limit {limit} < {needed}: lower --idle", file=sys.stderr)
        return 2

    root = dpskit.CertificateAuthority.create_root("Bench Hub Root")
    inter = root.create_intermediate("Bench Hub Intermediate")
    idle = inter.issue_devices([f"idle-{i:06d}" for i in range(args.idle)])
    senders = inter.issue_devices([f"sender-{i:04d}" for i in range(args.senders)])
    device_ca_pem = root.certificate.pem + inter.certificate.pem

    runs: list[ServerRun] = []
    with tempfile.TemporaryDirectory(prefix="dpskit-bench-hub-") as folder:
        runs.append(_emulator_run(Path(folder), idle, senders, args))
        if not args.no_websockets:
            runs.append(_emulator_run(Path(folder), idle, senders, args, "websockets"))
        mosquitto = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
        if args.no_mosquitto:
            pass
        elif mosquitto is None:
            print("mosquitto is not installed (apt-get install mosquitto): peer not measured\n")
        else:
            runs.append(_mosquitto_run(mosquitto, Path(folder), device_ca_pem, idle, senders, args))
    _report(runs, args)
    emulators = [r for r in runs if r.stored_after_sigkill is not None]
    return 0 if all(r.stored_after_sigkill == r.acknowledged for r in emulators) else 1


if __name__ == "__main__":
    sys.exit(main())
