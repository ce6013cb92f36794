"""``dpskit emulator``: the local cloud (DPS and IoT Hub emulator) run standalone until
Ctrl-C or SIGTERM, its state and CA kept in a folder other commands and the SDKs find."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dpskit._native import EMULATOR_CA_FILE
from dpskit.cli.argtypes import non_negative_int, positive_int
from dpskit.cli.output import _display, _Formatter, _print_fields
from dpskit.cli.targets import DEFAULT_LOCAL_DIR
from dpskit.errors import ConfigError


def cmd_emulator(args: argparse.Namespace) -> int:
    """``dpskit emulator``: run the local cloud until interrupted."""
    import signal
    import threading

    from dpskit.cloud import LocalCloud

    if args.print_loopback_setup is not None:
        from dpskit._native import loopback_setup

        print(loopback_setup(args.host, args.print_loopback_setup), end="")
        return 0
    arm_tokens: list[str] | None = None
    if args.arm_token_env:
        token = os.environ.get(args.arm_token_env, "").strip()
        if not token:
            raise ConfigError(
                f"--arm-token-env {args.arm_token_env}: that environment variable is not set "
                "or empty"
            )
        arm_tokens = [token]
    data_dir = Path(args.data_dir)
    stop = threading.Event()
    # SIGTERM (systemd, kill) stops as cleanly as Ctrl-C; so does Ctrl-Break on Windows, whose
    # consoles send it instead of SIGINT when asked to break.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ctrl_break = getattr(signal, "SIGBREAK", None)
    if ctrl_break is not None:
        signal.signal(ctrl_break, lambda *_: stop.set())
    cloud = LocalCloud(
        data_dir,
        host=args.host,
        port=args.port,
        max_connections=args.max_connections,
        https_port=args.https_port,
        web_port=args.web_port,
        amqp_port=args.amqp_port,
        poll_retry_after=args.poll_retry_after,
        arm_tokens=arm_tokens,
        arm_operation_seconds=args.arm_operation_seconds,
        throttle_every=args.throttle_every,
    )
    # From here on an interrupt at any moment ends in a clean stop.
    try:
        trust = data_dir / EMULATOR_CA_FILE
        if arm_tokens:
            arm_auth = f"bearer token from ${args.arm_token_env}"
        elif cloud.endpoints_file is not None and cloud.arm_token is not None:
            arm_auth = f"generated bearer token in {_display(cloud.endpoints_file)}"
        else:
            arm_auth = "any bearer token"
        print("dpskit local cloud (DPS and IoT Hub emulator)")
        _print_fields(
            [
                (
                    "mqtt",
                    f"{cloud.host}:{cloud.mqtt_port} (MQTT over TLS 1.2/1.3, up to "
                    f"{args.max_connections:,} device connections at once)",
                ),
                ("arm", f"{cloud.arm_endpoint} (ARM, {arm_auth})"),
                (
                    "web",
                    f"port {cloud.web_port} of each resource's address (HTTPS service APIs, "
                    "MQTT over WebSockets)",
                ),
                (
                    "amqp",
                    f"port {cloud.amqp_port} of each hub's address (the Event Hub-compatible "
                    "endpoint, C2D from the service SDK)",
                ),
                ("trust", f"{_display(trust)} (pass it as server_verification_cert)"),
                ("state", _display(cloud.data_dir)),
            ]
        )
        for dps in cloud.all_dps():
            print(f"  dps {dps.name}: id scope {dps.id_scope}, endpoint {dps.device_endpoint}")
        for hub in cloud.hubs():
            print(f"  hub {hub.name}: {hub.host_name}")
        print("Ctrl-C stops it; the state stays in the folder.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        cloud.stop()
    print("stopped")
    return 0


def add_emulator_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Adds ``dpskit emulator``."""
    p = commands.add_parser(
        "emulator",
        help="run the local cloud (DPS and IoT Hub emulator) until Ctrl-C",
        description="Run the embedded DPS emulator standalone: MQTT over TLS on HOST:PORT, state\n"
        "and the emulator's CA in DIR (kept across runs). Official SDKs connect unchanged\n"
        "when given DIR/emulator-ca.cert.pem as their server verification certificate.",
        formatter_class=_Formatter,
    )
    p.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR, metavar="DIR", help="state folder")
    p.add_argument("--host", default="127.0.0.1", help="address DPS listens on")
    p.add_argument(
        "--port", type=int, default=8883, help="MQTT port (the official SDKs always use 8883)"
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        default=20_000,
        metavar="N",
        help="device connections (MQTT, MQTT over WebSockets) open at once; one more is refused "
        "(closed on arrival, or 503 for a WebSocket upgrade). Each holds a file descriptor: "
        "past the open-file hard limit (`ulimit -Hn`, to which the soft limit is raised) "
        "connections fail at accept instead, whatever N says",
    )
    p.add_argument(
        "--https-port",
        type=int,
        default=0,
        help="port of ARM (0: any free port; `dpskit cloud` and `dpskit dps` find it in DIR)",
    )
    p.add_argument(
        "--web-port",
        type=int,
        default=443,
        help="HTTPS and MQTT over WebSockets on each resource's address (Azure's 443; where it "
        "cannot be bound, a free port, named in the hubs' connection strings)",
    )
    p.add_argument(
        "--amqp-port",
        type=int,
        default=5671,
        help="AMQP over TLS on each hub's address: its Event Hub-compatible endpoint (Azure's "
        "5671; where it cannot be bound, a free port, which `dpskit hub monitor` finds in DIR)",
    )
    p.add_argument(
        "--poll-retry-after",
        type=non_negative_int,
        default=0,
        help="retry-after seconds DPS advises while assigning (default 0: no wait, as fast as "
        "the machine allows; 3: what Azure sends)",
    )
    p.add_argument(
        "--arm-operation-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="how long ARM's hub and DPS creates and deletes run, as long-running operations "
        "(Activating/Deleting meanwhile)",
    )
    p.add_argument(
        "--throttle-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="answer every Nth request of each REST API with 429 and Retry-After (0: never)",
    )
    p.add_argument(
        "--arm-token-env",
        metavar="VAR",
        help="require this ARM bearer token, read from environment variable VAR (never from an "
        "argument, which other users could read); without it, on a non-loopback --host a random "
        "token is generated and written to DIR/endpoints.json (mode 0600)",
    )
    p.add_argument(
        "--print-loopback-setup",
        type=non_negative_int,
        metavar="N",
        help="print the commands that give N hubs their own loopback addresses after --host on "
        "this OS (macOS has only 127.0.0.1 without them; hubs then share 127.0.0.1 and "
        "localhost, two at most) and exit",
    )
    p.set_defaults(handler=cmd_emulator, parser=p)
