"""``dpskit hub``: a hub's service side from a shell. ``monitor`` prints its telemetry live
from the built-in Event Hub-compatible endpoint (what ``az iot hub monitor-events`` does,
without uamqp), on the local cloud or Azure, through dpskit's own AMQP reader."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from dpskit.cli.targets import DEFAULT_LOCAL_DIR, _target_options, open_target
from dpskit.cloud.records import HubEvent


def _event_json(event: HubEvent, with_properties: bool) -> dict[str, Any]:
    try:
        payload: Any = event.json()
    except ValueError:
        payload = event.body.decode("utf-8", errors="replace")
    shown: dict[str, Any] = {
        "event": {
            "origin": event.device_id,
            "module": event.module_id,
            "partition": event.partition,
            "sequenceNumber": event.sequence_number,
            "enqueuedTime": event.enqueued_time.isoformat(),
            "payload": payload,
        }
    }
    if with_properties:
        shown["event"]["properties"] = {
            "application": event.properties,
            "system": {
                key: value
                for key, value in (
                    ("message-id", event.message_id),
                    ("correlation-id", event.correlation_id),
                    ("content-type", event.content_type),
                    ("content-encoding", event.content_encoding),
                )
                if value is not None
            },
            "annotations": event.annotations,
        }
    return shown


async def _monitor(args: argparse.Namespace) -> int:
    with open_target(args, Path(DEFAULT_LOCAL_DIR)) as cloud:
        hub = cloud.hub(args.hub)
        events = hub.events(args.consumer_group, starting=args.starting)

        async def watch() -> None:
            seen = 0
            async for event in events:
                if args.device is not None and event.device_id != args.device:
                    continue
                print(json.dumps(_event_json(event, args.properties), default=str), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return

        try:
            await asyncio.wait_for(watch(), args.timeout)
        except asyncio.TimeoutError:
            # --timeout ends the watch: what arrived until then is the output.
            pass
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """``dpskit hub monitor``."""
    return asyncio.run(_monitor(args))


def add_hub_commands(commands: Any) -> None:
    """Adds ``hub`` to the top-level subcommands."""
    target = _target_options()
    hub = commands.add_parser("hub", help="a hub's service side: watch its telemetry")
    sub = hub.add_subparsers(title="commands", metavar="COMMAND")
    hub.set_defaults(handler=None, parser=hub)
    p = sub.add_parser(
        "monitor",
        parents=[target],
        help="print a hub's telemetry as it arrives (its Event Hub-compatible endpoint)",
    )
    p.add_argument("hub", help="the hub's name")
    p.add_argument("--device", help="only this device's events")
    p.add_argument(
        "--properties",
        action="store_true",
        help="show application properties, system properties and IoT Hub's annotations",
    )
    p.add_argument("--consumer-group", default="$Default", help="(default $Default)")
    p.add_argument(
        "--starting",
        choices=["latest", "earliest"],
        default="latest",
        help="latest: only what arrives from now on (default); earliest: everything retained",
    )
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    p.set_defaults(handler=cmd_monitor, parser=p)
