"""How the commands print: aligned ``key: value`` fields, paths shown relative to the working
directory, UTC times, where a password came from (never what it is), and the help formatter."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO


def _display(path: Path | str) -> str:
    """Show ``path`` relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def _print_fields(
    fields: Sequence[tuple[str, object]], *, indent: int = 2, out: TextIO | None = None
) -> None:
    """Print ``key: value`` lines with the values aligned."""
    stream = out if out is not None else sys.stdout
    if not fields:
        return
    width = max(len(key) for key, _ in fields) + 1
    pad = " " * indent
    for key, value in fields:
        print(f"{pad}{(key + ':').ljust(width)} {value}", file=stream)


def _print_files(files: dict[str, Path], *, indent: int = 2) -> None:
    labels = {
        "certificate": "certificate",
        "private_key": "private key",
        "chain": "chain",
        "full_chain": "full chain",
        "pkcs12": "pkcs12 (pfx)",
    }
    # A fixed order reads better than whatever order the mapping comes in.
    ordered = [kind for kind in labels if kind in files] + [k for k in files if k not in labels]
    _print_fields(
        [(labels.get(kind, kind), _display(files[kind])) for kind in ordered], indent=indent
    )


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_password(variable: str | None) -> str:
    # Only ever say where a password comes from, never what it is.
    return f"from ${variable}" if variable else "(none)"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep hand-made line breaks in descriptions and show the defaults worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # "(default: None)" or "(default: False)" would only be noise.
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return action.help
        return f"{text} (default: %(default)s)"
