"""``dpskit hub``: a hub's service side from a shell. ``monitor`` prints its telemetry live
from the built-in Event Hub-compatible endpoint (what ``az iot hub monitor-events`` does,
without uamqp); ``send-c2d`` sends a cloud-to-device message and, with ``--wait``, prints its
delivery feedback (``az iot device c2d-message send --wait``). Both on the local cloud or
Azure, through dpskit's own AMQP clients."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from dpskit.cli.targets import DEFAULT_LOCAL_DIR, _target_options, open_target
from dpskit.cloud.records import C2dFeedback, HubEvent
from dpskit.errors import ConfigError


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


def _property(text: str) -> tuple[str, str]:
    """``--property k=v``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a property is key=value, not {text!r}")
    return key, value


def _feedback_json(feedback: C2dFeedback) -> dict[str, Any]:
    return {
        "originalMessageId": feedback.original_message_id,
        "deviceId": feedback.device_id,
        "statusCode": feedback.status,
        "description": feedback.description,
        "enqueuedTimeUtc": feedback.enqueued_time.isoformat(),
        "deviceGenerationId": feedback.device_generation_id,
    }


def cmd_send_c2d(args: argparse.Namespace) -> int:
    """``dpskit hub send-c2d``."""
    with open_target(args, Path(DEFAULT_LOCAL_DIR)) as cloud:
        if args.hub is not None:
            hub = cloud.hub(args.hub)
        else:
            hubs = cloud.hubs()
            if len(hubs) != 1:
                names = ", ".join(h.name for h in hubs) or "none"
                raise ConfigError(f"name the hub with --hub (this cloud has {names})")
            hub = hubs[0]
        ack = args.ack
        if args.wait and ack is None:
            # Waiting needs an outcome to wait for, whichever it is.
            ack = "full"
        message_id = hub.send_c2d(
            args.device,
            args.body,
            properties=dict(args.property or []),
            ack=ack,
            expires_in=args.ttl,
            message_id=args.message_id,
        )
        print(json.dumps({"messageId": message_id, "deviceId": args.device}), flush=True)
        if args.wait:
            feedback = hub.wait_for_feedback(message_id, timeout=args.timeout)
            print(json.dumps({"feedback": _feedback_json(feedback)}), flush=True)
    return 0


def add_hub_commands(commands: Any) -> None:
    """Adds ``hub`` to the top-level subcommands."""
    target = _target_options()
    hub = commands.add_parser(
        "hub", help="a hub's service side: watch its telemetry, send cloud-to-device messages"
    )
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
    c = sub.add_parser(
        "send-c2d",
        parents=[target],
        help="send a cloud-to-device message (over AMQP); --wait prints its delivery feedback",
    )
    c.add_argument("device", help="the device's id")
    c.add_argument("body", help="the message's body (text)")
    c.add_argument("--hub", help="the hub's name (default: the cloud's only hub)")
    c.add_argument(
        "--property",
        type=_property,
        action="append",
        metavar="KEY=VALUE",
        help="an application property (repeatable)",
    )
    c.add_argument(
        "--ack",
        choices=["none", "positive", "negative", "full"],
        help="the delivery feedback to ask for (with --wait: full unless given)",
    )
    c.add_argument("--ttl", type=float, help="seconds the hub keeps it (default: the hub's hour)")
    c.add_argument("--message-id", help="its message id (default: a fresh GUID)")
    c.add_argument(
        "--wait", action="store_true", help="wait for the delivery feedback and print it"
    )
    c.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
    c.set_defaults(handler=cmd_send_c2d, parser=c)
