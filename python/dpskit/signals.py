"""Telemetry field generators for fleets: what each simulated sensor reports.

A :class:`Signal` describes one field of a device's telemetry. The values are computed in Rust
as the fleet runs (one deterministic random stream per device, from the plan's seed), so no
Python runs per message. Signals compose::

    from dpskit import signals

    temperature = (
        signals.sine(mean=21.0, amplitude=4.0, period=86_400)  # daily seasonality
        + signals.random_walk(start=0.0, step=0.05)  # slow drift
        + signals.gaussian(0.0, 0.3)  # sensor noise
    ).with_anomalies(rate=0.001, scale=15.0).rounded(2)

Times (``period``, ``every``) are in simulated seconds: a message is ``interval * time_scale``
simulated seconds after the previous one (see :class:`~dpskit.TelemetryPlan`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from dpskit.errors import ConfigError

__all__ = [
    "Signal",
    "choice",
    "constant",
    "counter",
    "gaussian",
    "random_walk",
    "sine",
    "step_change",
    "steps",
    "uniform",
    "values",
]


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _rate(name: str, value: float) -> float:
    value = _number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, not {value}")
    return value


@dataclass(frozen=True)
class Signal:
    """One telemetry field's generator (build it with the functions of this module)."""

    spec: dict[str, Any]
    anomaly_rate: float = 0.0
    anomaly_scale: float = 0.0
    round: int | None = None

    def __add__(self, other: Signal) -> Signal:
        """The sum of two numeric signals (each keeps its own state)."""
        if not isinstance(other, Signal):
            return NotImplemented
        parts = [*_parts(self), *_parts(other)]
        return Signal({"kind": "sum", "parts": parts})

    def with_anomalies(self, rate: float, scale: float) -> Signal:
        """With probability ``rate`` per message, add a spike of ``±scale`` to the value."""
        scale = _number("anomaly scale", scale)
        if scale < 0:
            raise ConfigError(f"anomaly scale must be 0 or more, not {scale}")
        return replace(self, anomaly_rate=_rate("anomaly rate", rate), anomaly_scale=scale)

    def rounded(self, digits: int) -> Signal:
        """Values rounded to ``digits`` decimal places."""
        if not isinstance(digits, int) or not 0 <= digits <= 15:
            raise ConfigError(f"digits must be an integer from 0 to 15, not {digits!r}")
        return replace(self, round=digits)

    def _field(self, name: str) -> dict[str, Any]:
        field: dict[str, Any] = {
            "name": name,
            "generator": self.spec,
            "anomaly_rate": self.anomaly_rate,
            "anomaly_scale": self.anomaly_scale,
        }
        if self.round is not None:
            field["round"] = self.round
        return field


def _parts(signal: Signal) -> list[dict[str, Any]]:
    if signal.anomaly_rate or signal.round is not None:
        raise ConfigError("add signals first, then apply with_anomalies() or rounded() to the sum")
    if signal.spec["kind"] == "sum":
        return list(signal.spec["parts"])
    return [signal.spec]


def constant(value: Any) -> Signal:
    """The same value in every message (any JSON value: a firmware version, a site name)."""
    return Signal({"kind": "constant", "value": value})


def uniform(low: float, high: float) -> Signal:
    """Independent draws, uniform in ``[low, high]``."""
    low, high = _number("low", low), _number("high", high)
    if low > high:
        raise ConfigError(f"low ({low}) must not exceed high ({high})")
    return Signal({"kind": "uniform", "low": low, "high": high})


def gaussian(mean: float, std: float) -> Signal:
    """Independent normal draws (sensor noise)."""
    std = _number("std", std)
    if std < 0:
        raise ConfigError(f"std must be 0 or more, not {std}")
    return Signal({"kind": "gaussian", "mean": _number("mean", mean), "std": std})


def random_walk(
    start: float, step: float, *, low: float | None = None, high: float | None = None
) -> Signal:
    """Each value is the previous one plus normal noise of standard deviation ``step``, kept
    within ``[low, high]`` when given (drifting sensors, battery levels)."""
    spec: dict[str, Any] = {
        "kind": "random_walk",
        "start": _number("start", start),
        "step": _number("step", step),
    }
    if step < 0:
        raise ConfigError(f"step must be 0 or more, not {step}")
    if low is not None:
        spec["low"] = _number("low", low)
    if high is not None:
        spec["high"] = _number("high", high)
    if low is not None and high is not None and low > high:
        raise ConfigError(f"low ({low}) must not exceed high ({high})")
    return Signal(spec)


def sine(mean: float, amplitude: float, period: float, *, phase: float | None = None) -> Signal:
    """Seasonality: ``mean + amplitude * sin(2π (t + phase) / period)`` over simulated time.
    Without ``phase`` each device gets its own random phase, so the fleet is not in lockstep."""
    period = _number("period", period)
    if period <= 0:
        raise ConfigError(f"period must be positive, not {period}")
    spec: dict[str, Any] = {
        "kind": "sine",
        "mean": _number("mean", mean),
        "amplitude": _number("amplitude", amplitude),
        "period": period,
    }
    if phase is not None:
        spec["phase"] = _number("phase", phase)
    return Signal(spec)


def steps(levels: Sequence[float], every: float) -> Signal:
    """Piecewise constant: ``levels`` in turn, each for ``every`` simulated seconds (a
    thermostat schedule, shifts)."""
    every = _number("every", every)
    if every <= 0:
        raise ConfigError(f"every must be positive, not {every}")
    checked = [_number("level", v) for v in levels]
    if not checked:
        raise ConfigError("steps needs at least one level")
    return Signal({"kind": "steps", "values": checked, "every": every})


def step_change(start: float, size: float, rate: float) -> Signal:
    """A level that, with probability ``rate`` per message, jumps by ``±size`` and stays there
    (a valve opening, a recalibration)."""
    return Signal(
        {
            "kind": "step_change",
            "start": _number("start", start),
            "size": _number("size", size),
            "rate": _rate("rate", rate),
        }
    )


def counter(start: int = 0, step: int = 1) -> Signal:
    """``start``, ``start + step``, ... (odometers, totals)."""
    return Signal({"kind": "counter", "start": start, "step": step})


def choice(options: Sequence[Any], weights: Sequence[float] | None = None) -> Signal:
    """A random pick among ``options`` (status strings, modes), optionally weighted."""
    if not options:
        raise ConfigError("choice needs at least one option")
    spec: dict[str, Any] = {"kind": "choice", "values": list(options)}
    if weights is not None:
        checked = [_number("weight", w) for w in weights]
        if len(checked) != len(options) or any(w < 0 for w in checked) or sum(checked) <= 0:
            raise ConfigError("weights must be one non-negative number per option, not all zero")
        spec["weights"] = checked
    return Signal(spec)


def values(sequence: Sequence[Any]) -> Signal:
    """Exactly these values, one per message, cycled (a recorded trace played back)."""
    if not sequence:
        raise ConfigError("values needs at least one value")
    return Signal({"kind": "values", "values": list(sequence)})
