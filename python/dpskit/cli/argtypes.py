"""Argument types shared by the command modules (argparse turns their errors into usage
messages), and the options several commands add alike."""

from __future__ import annotations

import argparse
import math

from dpskit._native import ALGORITHMS

__all__ = ["non_negative_float", "non_negative_int", "positive_int"]


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def _add_algorithm(parser: argparse.ArgumentParser, help_text: str = "key algorithm") -> None:
    """``--algorithm``: the key algorithm of what a command creates (the core's names)."""
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ec-p256", help=help_text)
