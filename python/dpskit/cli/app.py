"""The ``dpskit`` entry point: the top-level parser that gathers every command group's
subcommands, and :func:`main`, which runs one and turns expected failures into exit codes."""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Callable
from importlib import metadata

from dpskit.cli.certs import _WALKTHROUGH, add_certs_commands
from dpskit.cli.cloud import add_cloud_commands
from dpskit.cli.demo import add_demo_command
from dpskit.cli.device import add_device_commands
from dpskit.cli.doctor import add_doctor_commands
from dpskit.cli.emulator import add_emulator_command
from dpskit.cli.fleet import add_fleet_commands
from dpskit.cli.hub import add_hub_commands
from dpskit.cli.registry import add_registry_commands
from dpskit.errors import DpsKitError

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return metadata.version("dpskit")
    except metadata.PackageNotFoundError:
        # Running from a source tree that was never installed.
        return "0+unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpskit",
        description="Azure Device Provisioning Service with self-signed X.509 certificates.",
        epilog=_WALKTHROUGH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_certs_commands(commands)
    add_demo_command(commands)
    add_cloud_commands(commands)
    add_device_commands(commands)
    add_doctor_commands(commands)
    add_fleet_commands(commands)
    add_hub_commands(commands)
    add_registry_commands(commands)
    add_emulator_command(commands)

    parser.set_defaults(handler=None, parser=parser)
    return parser


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # The Rust core's messages end in "(os error N)", which tells a user nothing more.
        reason = re.sub(r" \(os error \d+\)$", "", exc.strerror)
        return f"{reason}: {exc.filename}"
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``dpskit`` command line and return its exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Expected failures (dpskit errors and file errors)
    print ``error: <message>`` to stderr and return 1; usage errors return 2.
    """
    # Output redirected on Windows uses the ANSI code page, which has no "→": such characters
    # print as "?" rather than failing a command whose work is already done.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help, --version and usage errors; report that as a status.
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: Handler | None = args.handler
    if handler is None:
        args.parser.print_help()
        return 2
    try:
        return handler(args)
    except (DpsKitError, OSError) as exc:
        print(f"error: {_describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
