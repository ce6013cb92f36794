"""Fleets: thousands of distinct simulated devices provisioned through DPS, connected to their
hubs and streaming telemetry on the Rust runtime of one process (a task per device, no thread
per device), or split into shards over an executor's workers (:mod:`dpskit.fleet_executor`), one
runtime each. Results come back as one :class:`FleetReport` with DataFrames.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import math
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeAlias

from dpskit._native import (
    DPS_REGISTRATIONS_PER_MINUTE,
    CertificateAuthority,
    DeviceCertificate,
    FleetRun,
    dps_onboarding_seconds,
    hub_tier_fits,
    transport_port,
)
from dpskit.cloud import (
    Dps,
    EnrollmentGroup,
    HubUsage,
    LocalCloud,
    _raise_open_file_limit,
    _unix,
)
from dpskit.cloud._common import Transport
from dpskit.device import _clock_offset_ms
from dpskit.errors import ConfigError
from dpskit.fleet_executor import (
    ShardTask,
    SubmitsWork,
    collect,
    device_certificates,
    missing_certificates,
    peak_rss_bytes,
    refuse_forking,
    run_shard,
    worker_count,
)
from dpskit.fleet_shards import (
    Merged,
    ShardPart,
    _registration_ids,
    merge_parts,
    merge_results,
    read_results,
    shard_from_environment,
    write_sidecar,
)
from dpskit.signals import Signal

__all__ = [
    "AzureEstimate",
    "Fleet",
    "FleetProgress",
    "FleetReport",
    "HubEstimate",
    "ShardRun",
    "TelemetryPlan",
    "TierFit",
    "shard_from_environment",
]

#: A custom field: called once per device as ``f(device_id, count, rng)`` and returning that
#: device's ``count`` values (fewer are cycled), so Python never runs per message.
CustomGenerator: TypeAlias = Callable[[str, int, random.Random], Sequence[Any]]

#: What a hub's presets refused during a run: 429s by operation, and 403002 quota refusals.
_Refusals: TypeAlias = tuple[dict[str, int], int]

#: Executors whose workers all run on this machine.
_LOCAL_POOLS = (ProcessPoolExecutor, ThreadPoolExecutor)

#: Azure's documented DPS registration rate per instance (from the core's table of rates).
AZURE_REGISTRATIONS_PER_MINUTE: int = DPS_REGISTRATIONS_PER_MINUTE


@dataclass(frozen=True)
class TierFit:
    """The fewest units of one IoT Hub tier that carry a hub's demand, or why none do.

    ``limited_by`` names the limit that decides the units: ``"daily quota"``, ``"d2c sends"``,
    ``"connections"`` or ``"none"`` (one unit is enough); when ``units`` is None it says why the
    tier cannot (``"no twins, methods or C2D"``, ``"past its N units (...)"``).
    ``metered_messages_per_day`` counts the messages a day in this tier's meter blocks (4 KB,
    0.5 KB on F1)."""

    tier: str
    units: int | None
    limited_by: str
    metered_messages_per_day: float

    def __str__(self) -> str:
        if self.units is None:
            return f"{self.tier}: {self.limited_by}"
        why = "" if self.limited_by == "none" else f" ({self.limited_by})"
        return f"{self.tier} x {self.units}{why}"


@dataclass(frozen=True)
class HubEstimate:
    """What one hub of the run would need on Azure (see :meth:`FleetReport.azure_estimate`).

    ``d2c_per_second`` is the hub's device-to-cloud rate in Azure's time: its messages (less
    one) over the time from its devices' first send to their last, divided by the run's time
    compression.
    ``mean_message_bytes`` is the size IoT Hub counts (body and properties). ``fits`` holds
    every tier, F1 to S3. ``throttled`` (429s by operation: ``connections``, ``d2c_sends``,
    ...) and ``quota_refusals`` (403002) are what the hub's tier presets refused during the run;
    None where they could not be read (Azure, or an emulator in another process)."""

    hub: str
    devices: int
    d2c_per_second: float
    mean_message_bytes: float
    needs_standard: bool
    fits: tuple[TierFit, ...]
    throttled: dict[str, int] | None = None
    quota_refusals: int | None = None

    def fit(self, tier: str) -> TierFit:
        """The fit for ``tier`` (``"S1"``, case-insensitive)."""
        for candidate in self.fits:
            if candidate.tier.lower() == tier.lower():
                return candidate
        tiers = ", ".join(f.tier for f in self.fits)
        raise ConfigError(f"unknown IoT Hub tier {tier!r}: one of {tiers}")


@dataclass(frozen=True)
class AzureEstimate:
    """What the run's fleet would take of Azure (see :meth:`FleetReport.azure_estimate`):
    ``dps_onboarding_seconds`` to register its ``devices`` through one DPS at Azure's
    ``registrations_per_minute``, and per hub a :class:`HubEstimate`. ``time_compression`` is
    the factor the measured rates were divided by."""

    devices: int
    dps_onboarding_seconds: float
    registrations_per_minute: int
    time_compression: float
    hubs: tuple[HubEstimate, ...]

    def hub(self, name: str) -> HubEstimate:
        """The estimate for hub ``name``."""
        for hub in self.hubs:
            if hub.hub == name:
                return hub
        raise ConfigError(f"no devices of this run went to hub {name!r}")


@dataclass(frozen=True)
class TelemetryPlan:
    """What every device of a fleet sends once connected.

    Each device sends one message every ``interval`` seconds (``0``: as fast as the hub
    acknowledges), shifted by up to ``±jitter/2`` of the interval, for ``duration`` seconds or
    ``count`` messages (the fewer, when both are given). Bodies are JSON objects with
    ``deviceId``, ``seq``, ``ts`` (simulated time, advancing ``interval * time_scale`` per
    message) and one key per field of ``fields``. A fraction ``dropout_rate`` of messages is
    skipped (a gap in ``seq``) and ``duplicate_rate`` is sent twice with the same message id.
    Everything is reproducible from ``seed``.
    """

    interval: float = 1.0
    duration: float | None = None
    count: int | None = None
    fields: Mapping[str, Signal | CustomGenerator] = field(default_factory=dict)
    jitter: float = 0.1
    seed: int = 0
    time_scale: float = 1.0
    start: datetime | None = None
    dropout_rate: float = 0.0
    duplicate_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval >= 0):
            raise ConfigError(f"interval must be 0 or more seconds, not {self.interval}")
        if self.duration is None and self.count is None:
            raise ConfigError("a telemetry plan needs a duration or a count")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ConfigError(f"duration must be positive, not {self.duration}")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 1):
            raise ConfigError(f"count must be a positive integer, not {self.count!r}")
        if self.count is None and self.interval == 0:
            raise ConfigError("with interval=0 (as fast as possible) give a count, not a duration")
        for name, rate in (
            ("jitter", self.jitter),
            ("dropout_rate", self.dropout_rate),
            ("duplicate_rate", self.duplicate_rate),
        ):
            if not (math.isfinite(rate) and 0 <= rate <= 1):
                raise ConfigError(f"{name} must be between 0 and 1, not {rate}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ConfigError(f"time_scale must be positive, not {self.time_scale}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, not {self.seed!r}")
        for name, generator in self.fields.items():
            if name in {"deviceId", "seq", "ts"}:
                raise ConfigError(f"field name {name!r} is reserved for the message envelope")
            if not isinstance(generator, Signal) and not callable(generator):
                raise ConfigError(
                    f"field {name!r}: expected a dpskit.signals generator or a callable, "
                    f"not {type(generator).__name__}"
                )

    @property
    def messages_per_device(self) -> int:
        """Messages each device plans (dropouts included, duplicates not)."""
        by_duration = (
            max(1, math.floor(self.duration / self.interval + 1e-9))
            if self.duration is not None and self.interval > 0
            else None
        )
        candidates = [n for n in (self.count, by_duration) if n is not None]
        return min(candidates)

    def _spec(self, start: datetime | None) -> dict[str, Any]:
        """The plan for the Rust engine; without ``start`` the run's start is used."""
        return {
            "interval": self.interval,
            "jitter": self.jitter,
            "duration": self.duration,
            "count": self.count,
            "seed": self.seed,
            "time_scale": self.time_scale,
            "start_unix_ms": None if start is None else int(start.timestamp() * 1000),
            "dropout_rate": self.dropout_rate,
            "duplicate_rate": self.duplicate_rate,
            "fields": [g._field(n) for n, g in self.fields.items() if isinstance(g, Signal)],
        }

    def _custom_values(self, devices: Sequence[tuple[int, str]]) -> dict[str, list[list[Any]]]:
        """Runs the custom generators, once per device each."""
        count = self.messages_per_device
        out: dict[str, list[list[Any]]] = {}
        for name, generator in self.fields.items():
            if isinstance(generator, Signal):
                continue
            columns = []
            for index, device_id in devices:
                rng = random.Random(self.seed * 1_000_003 + index)
                produced = list(generator(device_id, count, rng))
                if not produced:
                    raise ConfigError(f"custom field {name!r} gave no values for {device_id}")
                columns.append(produced)
            out[name] = columns
        return out


@dataclass(frozen=True)
class FleetProgress:
    """A snapshot of a running fleet (what the progress bar shows)."""

    total: int
    provisioned: int
    connected: int
    failed: int
    finished: int
    sent: int
    acknowledged: int
    retries: int
    elapsed: float
    #: Over an executor: the shards finished and in all (the counts above are theirs); None
    #: for a run in one process.
    shards_done: int | None = None
    shards: int | None = None

    def __str__(self) -> str:
        shards = "" if self.shards is None else f"shards {self.shards_done}/{self.shards}  "
        return (
            f"{shards}provisioned {self.provisioned:,}/{self.total:,}  "
            f"connected {self.connected:,}  "
            f"failed {self.failed:,}  messages {self.acknowledged:,}/{self.sent:,} acked  "
            f"retries {self.retries:,}  {self.elapsed:,.1f} s"
        )


class _ProgressDisplay:
    """A one-line live display: rewritten in place on a terminal, a display handle updated in
    a notebook, nothing elsewhere (logs and CI stay clean)."""

    def __init__(self, enabled: bool | None) -> None:
        self._handle: Any = None
        self._terminal = False
        if enabled is False:
            return
        shell = _notebook_shell()
        if shell is not None:
            display = importlib.import_module("IPython.display")
            self._handle = display.display(display.Pretty(""), display_id=True)
        elif enabled or sys.stderr.isatty():
            self._terminal = True

    def update(self, snapshot: FleetProgress) -> None:
        text = str(snapshot)
        if self._handle is not None:
            display = importlib.import_module("IPython.display")
            self._handle.update(display.Pretty(text))
        elif self._terminal:
            sys.stderr.write("\r" + text.ljust(110)[:110])
            sys.stderr.flush()

    def close(self) -> None:
        if self._terminal:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _notebook_shell() -> Any:
    """The IPython kernel's shell when running in a notebook, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return None
    return shell


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}

    def at(q: float) -> float:
        # Nearest rank: a value that was actually observed.
        return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": data[-1]}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _rate(per_second: float) -> str:
    return f"{per_second:,.1f}" if per_second < 10 else f"{per_second:,.0f}"


class _Text(str):
    """A string that shows as itself in a notebook cell (no quotes, real newlines)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


_AZURE_COLUMNS = [
    "hub",
    "devices",
    "d2c_per_second",
    "mean_message_bytes",
    "tier",
    "units",
    "limited_by",
    "metered_messages_per_day",
]


@dataclass(frozen=True)
class ShardRun:
    """Where and how one shard of a run ran (see :attr:`FleetReport.shard_runs`): ``shard``
    ``(i, n)`` and its ``devices``; ``started_s``, seconds after the run's start, and
    ``elapsed``; the ``host`` and ``pid`` of the process that ran it and that process's peak
    resident memory ``peak_rss_bytes`` (None where unknown); ``source``, the saved result or
    the worker it came from."""

    shard: tuple[int, int]
    devices: int
    started_s: float
    elapsed: float
    host: str | None
    pid: int | None
    peak_rss_bytes: int | None
    source: str


class FleetReport:
    """What a fleet run did: per device and per message, with the aggregates data teams ask
    for first. ``to_pandas()`` gives the frames, ``summary()`` a readable table."""

    def __init__(
        self,
        columns: dict[str, Any],
        *,
        hubs: Mapping[str, str],
        pacing: float | None,
        shard: tuple[int, int] | None,
        refusals: Mapping[str, _Refusals] | None = None,
        run: Mapping[str, Any] | None = None,
        shard_runs: Sequence[ShardRun] = (),
    ) -> None:
        self._devices: dict[str, list[Any]] = columns["devices"]
        self._messages: dict[str, list[Any]] = columns["messages"]
        #: Wall time of the whole run, in seconds.
        self.elapsed: float = columns["elapsed"]
        #: Seconds until the last device was connected (or had failed).
        self.connect_phase: float = columns["connect_phase"]
        #: The most devices that waited at once (for a DPS poll, a backoff) without holding one
        #: of the ``concurrency`` slots, which only bound dialling and handshakes: above
        #: ``concurrency`` when DPS advises a ``retry-after``.
        self.peak_waiting: int = columns.get("peak_waiting", 0)
        #: When the run started (UTC): ``started_s`` and ``sent_at`` count from it.
        self.started_at = _unix(columns["started_unix"])
        #: The shard this process ran, ``(i, n)``, or None for the whole fleet.
        self.shard = shard
        self._hub_names = dict(hubs)
        self._pacing = pacing
        self._refusals = dict(refusals) if refusals is not None else None
        # What makes two shards parts of one run (see Fleet._identity); None when unknown.
        self._run = dict(run) if run is not None else None
        #: Where each shard ran, in shard order: one entry for a run of one process, one per
        #: shard for a run over an executor or merged from saved shards (empty when unknown).
        self.shard_runs: tuple[ShardRun, ...] = tuple(shard_runs)

    # -- counts ------------------------------------------------------------------------------

    @property
    def device_count(self) -> int:
        """Devices in this run."""
        return len(self._devices["registration_id"])

    @property
    def outcomes(self) -> dict[str, int]:
        """Devices by outcome (``completed``, ``provisioning_failed``, ``connect_failed``,
        ``telemetry_failed``, ``cancelled``)."""
        return dict(Counter(self._devices["outcome"]))

    @property
    def completed(self) -> int:
        """Devices that provisioned, connected and sent their whole plan."""
        return self.outcomes.get("completed", 0)

    @property
    def error_codes(self) -> dict[str, int]:
        """Failed devices by Azure error code (``"none"`` when the failure had no code)."""
        return dict(
            Counter(
                str(code) if code is not None else "none"
                for code, outcome in zip(
                    self._devices["error_code"], self._devices["outcome"], strict=True
                )
                if outcome != "completed"
            )
        )

    @property
    def provisioned(self) -> int:
        """Devices DPS assigned to a hub."""
        return sum(1 for hub in self._devices["assigned_hub"] if hub)

    @property
    def devices_per_hub(self) -> dict[str, int]:
        """Assigned devices per hub: its name when the DPS links it, else its host name."""
        return dict(Counter(self._hub_names.get(h, h) for h in self._devices["assigned_hub"] if h))

    @property
    def messages_sent(self) -> int:
        """Messages published (duplicates included)."""
        return int(sum(self._devices["sent"]))

    @property
    def messages_acknowledged(self) -> int:
        """Messages the hubs acknowledged: each is stored by the hub."""
        return int(sum(self._devices["acknowledged"]))

    @property
    def retries(self) -> dict[str, int]:
        """Throttled or failed registrations tried again, hub connections tried again, and
        connections lost and re-established."""
        return {
            "provisioning": int(sum(self._devices["provision_retries"])),
            "connect": int(sum(self._devices["connect_retries"])),
            "reconnects": int(sum(self._devices["reconnects"])),
        }

    @property
    def renewals(self) -> int:
        """Devices whose hub renewed their certificate (a :meth:`Fleet.rollover`)."""
        return sum(1 for renewed in self._devices.get("renewed", []) if renewed)

    @property
    def renewal_failures(self) -> dict[str, int]:
        """Failed renewals by Azure error code (``"none"`` when the failure had none, e.g. a
        timeout); the devices kept their certificates. ``renewal_error`` in the device frame
        says why."""
        errors = self._devices.get("renewal_error", [])
        codes = self._devices.get("renewal_error_code", [None] * len(errors))
        return dict(
            Counter(
                str(code) if code is not None else "none"
                for error, code in zip(errors, codes, strict=True)
                if error
            )
        )

    def expiring_within(self, days: float, *, now: datetime | None = None) -> int:
        """Devices whose certificate (issued or renewed) expires within ``days`` of ``now``
        (default: the wall clock; pass the local cloud's ``now()`` after moving its time)."""
        now = now or datetime.now(timezone.utc)
        horizon = now.timestamp() + days * 86_400
        return sum(
            1
            for not_after in self._devices.get("certificate_not_after", [])
            if not_after is not None and not_after <= horizon
        )

    @property
    def provisioning_latency_ms(self) -> dict[str, float]:
        """Registration latency percentiles (p50, p95, p99, max) in ms."""
        return _percentiles(self._devices["provision_ms"])

    @property
    def connect_latency_ms(self) -> dict[str, float]:
        """Hub connect latency (TLS + CONNACK) percentiles in ms."""
        return _percentiles(self._devices["connect_ms"])

    @property
    def ack_latency_ms(self) -> dict[str, float]:
        """Publish-to-PUBACK latency percentiles in ms (recorded messages)."""
        return _percentiles(self._messages["latency_ms"])

    @property
    def provisioning_rate(self) -> float:
        """Devices provisioned and connected per second over the connect phase."""
        connected = sum(1 for ms in self._devices["connect_ms"] if ms is not None)
        return connected / self.connect_phase if self.connect_phase > 0 else 0.0

    @property
    def telemetry_rate(self) -> float:
        """Acknowledged messages per second, from the first publish to the last PUBACK."""
        sent_at = self._messages["sent_at_s"]
        if not sent_at:
            return 0.0
        ends = [
            s + ms / 1000.0
            for s, ms in zip(sent_at, self._messages["latency_ms"], strict=True)
            if not math.isnan(ms)
        ]
        span = (max(ends) if ends else self.elapsed) - min(sent_at)
        acked = len(ends)
        return acked / span if span > 0 else 0.0

    @property
    def azure_minimum_seconds(self) -> float:
        """The least time Azure's DPS quota (1,000 registrations per minute per instance)
        would take to register this many devices."""
        return dps_onboarding_seconds(self.device_count)

    def azure_estimate(
        self, *, needs_standard: bool = False, time_compression: float | None = None
    ) -> AzureEstimate:
        """What this run's fleet would take of Azure, from what it did here.

        The DPS onboarding time is this run's devices at Azure's registration rate for one
        instance (a shard estimates its own slice). Per hub, the measured device-to-cloud rate
        and mean message size (see :class:`HubEstimate`) give, for every tier, the fewest units
        whose daily quota, send throttle and connection throttle carry them. The connection
        throttle is asked to connect the hub's devices within the DPS onboarding time of the
        whole fleet: devices cannot connect faster than DPS registers them, so a quicker
        connect window would ask for units nothing could use.

        ``needs_standard``: the deployed fleet will use twins, direct methods or C2D, which
        Basic and Free tiers lack (a fleet run only sends telemetry, so it cannot tell).
        ``time_compression``: how much faster than Azure the run went; by default the run's
        own (``Fleet(pace_like_azure=True, time_compression=...)``), else 1."""
        compression = (self._pacing or 1.0) if time_compression is None else time_compression
        if not (math.isfinite(compression) and compression > 0):
            raise ConfigError(f"time_compression must be positive, not {compression}")
        onboarding = dps_onboarding_seconds(self.device_count)
        per_hub: dict[str, list[int]] = {}
        for position, host in enumerate(self._devices["assigned_hub"]):
            if host:
                per_hub.setdefault(self._hub_names.get(host, host), []).append(position)
        sent = self._devices["sent"]
        size = self._devices["bytes_sent"]
        first, last = self._devices["first_sent_s"], self._devices["last_sent_s"]
        hubs = []
        for name in sorted(per_hub):
            positions = per_hub[name]
            messages = sum(sent[i] for i in positions)
            # The rate the hub saw: its messages over the time from its first send to its last.
            # (A sum of per-device rates would take a device's burst of messages sent in a few
            # microseconds for a rate it keeps up.)
            senders = [i for i in positions if sent[i] > 0]
            span = (
                max(last[i] for i in senders) - min(first[i] for i in senders) if senders else 0.0
            )
            rate = (messages - 1) / span if messages > 1 and span > 0 else 0.0
            mean_bytes = sum(size[i] for i in positions) / messages if messages else 0.0
            demand = rate / compression
            fits = tuple(
                TierFit(tier, units, limited_by, metered)
                for tier, units, limited_by, metered in hub_tier_fits(
                    len(positions), demand, mean_bytes, needs_standard, onboarding
                )
            )
            refusals = None if self._refusals is None else self._refusals.get(name)
            hubs.append(
                HubEstimate(
                    hub=name,
                    devices=len(positions),
                    d2c_per_second=demand,
                    mean_message_bytes=mean_bytes,
                    needs_standard=needs_standard,
                    fits=fits,
                    throttled=None if refusals is None else dict(refusals[0]),
                    quota_refusals=None if refusals is None else refusals[1],
                )
            )
        return AzureEstimate(
            devices=self.device_count,
            dps_onboarding_seconds=onboarding,
            registrations_per_minute=AZURE_REGISTRATIONS_PER_MINUTE,
            time_compression=compression,
            hubs=tuple(hubs),
        )

    def throughput(self) -> list[tuple[int, int, int]]:
        """Per second of the run: ``(second, messages sent, messages acknowledged)``."""
        sent: Counter[int] = Counter()
        acked: Counter[int] = Counter()
        for s, ms in zip(self._messages["sent_at_s"], self._messages["latency_ms"], strict=True):
            sent[int(s)] += 1
            if not math.isnan(ms):
                acked[int(s + ms / 1000.0)] += 1
        last = max([*sent, *acked], default=-1)
        return [(second, sent[second], acked[second]) for second in range(last + 1)]

    # -- frames ------------------------------------------------------------------------------

    def device_rows(self) -> list[dict[str, Any]]:
        """One dict per device (what ``to_pandas("devices")`` holds)."""
        keys = list(self._devices)
        rows = zip(*self._devices.values(), strict=True)
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def to_pandas(self, kind: str = "devices") -> Any:
        """A DataFrame: ``"devices"`` (one row per device: outcome, error, hub, latencies,
        retries, messages, dropouts, duplicates), ``"messages"`` (one row per publish:
        device_id, seq, message_id, sent_at, latency_ms, acknowledged, anomaly, duplicate) or
        ``"throughput"`` (per second) or ``"azure"`` (:meth:`azure_estimate`, one row per hub
        and tier: hub, devices, d2c_per_second, mean_message_bytes, tier, units (missing when
        no number of units of the tier can), limited_by, metered_messages_per_day).

        The message frame joins the hub's ``telemetry().to_pandas()`` on ``message_id``. A
        duplicate is a second publish with the same id (as a device resending does), so the
        hub holds two rows for it too: join the rows with ``duplicate == False`` to get one
        match per stored copy."""
        pd = importlib.import_module("pandas")
        if kind == "devices":
            frame = pd.DataFrame(self._devices)
            frame["started_at"] = [
                self.started_at + timedelta(seconds=s) for s in self._devices["started_s"]
            ]
            frame["hub"] = [self._hub_names.get(h, h) if h else None for h in frame["assigned_hub"]]
            if "certificate_not_after" in frame:
                frame["certificate_not_after"] = pd.to_datetime(
                    frame["certificate_not_after"], unit="s", utc=True
                )
            return frame
        if kind == "messages":
            ids = self._devices["registration_id"]
            device_ids = [ids[i] for i in self._messages["device"]]
            seqs = self._messages["seq"]
            latency = self._messages["latency_ms"]
            return pd.DataFrame(
                {
                    "device_id": device_ids,
                    "seq": seqs,
                    "message_id": [f"{d}-{s}" for d, s in zip(device_ids, seqs, strict=True)],
                    "sent_at": pd.to_datetime(
                        [self.started_at.timestamp() + s for s in self._messages["sent_at_s"]],
                        unit="s",
                        utc=True,
                    ),
                    "latency_ms": latency,
                    "acknowledged": [not math.isnan(ms) for ms in latency],
                    "anomaly": self._messages["anomaly"],
                    "duplicate": self._messages["duplicate"],
                }
            )
        if kind == "throughput":
            rows = self.throughput()
            return pd.DataFrame(rows, columns=["second", "sent", "acknowledged"])
        if kind == "azure":
            records = [
                {
                    "hub": hub.hub,
                    "devices": hub.devices,
                    "d2c_per_second": hub.d2c_per_second,
                    "mean_message_bytes": hub.mean_message_bytes,
                    "tier": fit.tier,
                    "units": fit.units,
                    "limited_by": fit.limited_by,
                    "metered_messages_per_day": fit.metered_messages_per_day,
                }
                for hub in self.azure_estimate().hubs
                for fit in hub.fits
            ]
            columns = list(records[0]) if records else _AZURE_COLUMNS
            frame = pd.DataFrame(records, columns=columns)
            # Nullable integers: a tier that cannot carry the hub is missing, not NaN floats.
            frame["units"] = frame["units"].astype("Int64")
            return frame
        raise ConfigError(
            f"kind must be 'devices', 'messages', 'throughput' or 'azure', not {kind!r}"
        )

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Writes the device frame to ``path`` (``.csv`` or ``.parquet``; parquet needs pyarrow),
        the message frame next to it as ``<stem>.messages<suffix>`` and what a merge needs as
        ``<stem>.run.json`` (the run's identity, the shard, its start, elapsed time, hubs,
        pacing and refusals): :meth:`load` reads the three back. Returns the three paths."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in {".csv", ".parquet"}:
            raise ConfigError(f"results go to a .csv or .parquet file, not {target.name!r}")
        messages_path = target.with_name(f"{target.stem}.messages{target.suffix}")
        written = []
        for frame, out in (
            (self.to_pandas("devices"), target),
            (self.to_pandas("messages"), messages_path),
        ):
            if suffix == ".csv":
                frame.to_csv(out, index=False)
            else:
                try:
                    frame.to_parquet(out, index=False)
                except ImportError as error:
                    raise ConfigError(
                        "writing parquet needs pyarrow: pip install pyarrow (or use .csv)"
                    ) from error
            written.append(out)
        refusals = (
            None
            if self._refusals is None
            else {
                hub: {"throttled": dict(throttled), "quota_refusals": quota}
                for hub, (throttled, quota) in self._refusals.items()
            }
        )
        record = {
            "run": self._run,
            "shard": None if self.shard is None else list(self.shard),
            "started_unix": self.started_at.timestamp(),
            "elapsed": self.elapsed,
            "connect_phase": self.connect_phase,
            "peak_waiting": self.peak_waiting,
            "hubs": self._hub_names,
            "pacing": self._pacing,
            "refusals": refusals,
            **self._process_record(),
        }
        written.append(write_sidecar(target, record))
        return written

    def _process_record(self) -> dict[str, Any]:
        """The process that ran this report's devices, when one did (not a merged report)."""
        if len(self.shard_runs) != 1:
            return {"host": None, "pid": None, "peak_rss_bytes": None}
        (only,) = self.shard_runs
        return {"host": only.host, "pid": only.pid, "peak_rss_bytes": only.peak_rss_bytes}

    @classmethod
    def _merged(cls, parts: Sequence[ShardPart], **overrides: Any) -> FleetReport:
        """One report from the shards' parts (see :func:`~dpskit.fleet_shards.merge_parts`)."""
        return cls._from(merge_parts(parts), **overrides)

    @classmethod
    def _from(cls, merged: Merged, **overrides: Any) -> FleetReport:
        settings: dict[str, Any] = {
            "hubs": merged.hubs,
            "pacing": merged.pacing,
            "shard": None,
            "refusals": merged.refusals,
            "run": merged.run,
            "shard_runs": [ShardRun(**where) for where in merged.parts],
        }
        settings.update(overrides)
        return cls(merged.columns, **settings)

    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> FleetReport:
        """One report from results written by :meth:`save`: files (the device frame or its
        ``.run.json``) or folders (every result in them), e.g. the shards of a fleet that a
        scheduler ran (``--shard auto``), as if one process had run it: devices and messages
        in device order, times counted from the earliest shard's start, ``elapsed`` and
        ``connect_phase`` up to the last shard's end, counts summed, ``shard`` None. One
        unsharded result loads as itself.

        Raises :class:`~dpskit.errors.ConfigError`, naming the files, for shards of different
        runs (another fleet size, prefix, seed, plan or DPS), a shard missing or given twice,
        shards that disagree on the shard count, and any file that does not parse."""
        return cls._from(merge_results(read_results(paths)))

    # -- text --------------------------------------------------------------------------------

    def summary(self) -> str:
        """A readable table of the run (shows as is in a notebook cell)."""

        def ms(p: dict[str, float]) -> str:
            if math.isnan(p["p50"]):
                return "-"
            # Sub-10 ms latencies (loopback acks) need a decimal to say anything.
            shown = [f"{v:,.1f}" if v < 10 else f"{v:,.0f}" for v in (p["p50"], p["p95"], p["p99"])]
            return " / ".join(shown) + " ms"

        shard = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        lines = [
            f"Fleet of {self.device_count:,} devices{shard}: {self.elapsed:,.1f} s",
            "",
            f"  {'completed':<28}{self.completed:>10,}",
        ]
        for outcome, n in sorted(self.outcomes.items()):
            if outcome != "completed":
                lines.append(f"  {outcome:<28}{n:>10,}")
        if self.error_codes:
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.error_codes.items()))
            lines.append(f"  {'error codes':<28}{codes:>10}")
        retries = self.retries
        lines += [
            f"  {'provisioning retries':<28}{retries['provisioning']:>10,}",
            f"  {'hub connect retries':<28}{retries['connect']:>10,}",
            f"  {'hub reconnects':<28}{retries['reconnects']:>10,}",
            f"  {'provisioned + connected /s':<28}{_rate(self.provisioning_rate):>10}",
            f"  {'provisioning p50/p95/p99':<28}{ms(self.provisioning_latency_ms):>24}",
            f"  {'connect p50/p95/p99':<28}{ms(self.connect_latency_ms):>24}",
            f"  {'messages sent':<28}{self.messages_sent:>10,}",
            f"  {'messages acknowledged':<28}{self.messages_acknowledged:>10,}",
        ]
        if self._messages["sent_at_s"]:
            lines += [
                f"  {'acknowledged /s':<28}{_rate(self.telemetry_rate):>10}",
                f"  {'ack latency p50/p95/p99':<28}{ms(self.ack_latency_ms):>24}",
            ]
        lines += ["", "  devices per hub:"]
        for hub, n in sorted(self.devices_per_hub.items()):
            lines.append(f"    {hub:<40}{n:>8,}")
        if self._pacing is not None:
            lines += [
                "",
                f"  Paced like Azure ({AZURE_REGISTRATIONS_PER_MINUTE:,} registrations/min per "
                f"DPS), time compressed {self._pacing:g}x: on Azure registering this fleet "
                f"takes at least {_duration(self.azure_minimum_seconds)}.",
            ]
        lines += self._azure_lines(self.azure_estimate())
        return _Text("\n".join(lines))

    @staticmethod
    def _azure_lines(estimate: AzureEstimate) -> list[str]:
        """The summary's "On Azure" section."""
        compressed = (
            f", rates divided by the time compression {estimate.time_compression:g}x"
            if estimate.time_compression != 1.0
            else ""
        )
        lines = [
            "",
            "  On Azure:",
            f"    {'onboarding via one DPS':<28}{_duration(estimate.dps_onboarding_seconds):>10}"
            f"  ({estimate.registrations_per_minute:,} registrations/min{compressed})",
        ]
        for hub in estimate.hubs:
            standard = " · ".join(str(f) for f in hub.fits if f.tier.startswith("S"))
            other = " · ".join(str(f) for f in hub.fits if not f.tier.startswith("S"))
            lines += [
                f"    {hub.hub}: {hub.devices:,} devices, {_rate(hub.d2c_per_second)} messages/s "
                f"of {hub.mean_message_bytes:,.0f} B",
                f"      {standard}",
                f"      {other}",
            ]
            if hub.throttled is not None:
                refused = " · ".join(f"{op} {n:,}" for op, n in hub.throttled.items() if n)
                lines.append(
                    f"      refused during the run: 429 {refused or 'none'}; "
                    f"403002 {hub.quota_refusals or 0:,}"
                )
        return lines

    def __repr__(self) -> str:
        return (
            f"<FleetReport devices={self.device_count} completed={self.completed} "
            f"acknowledged={self.messages_acknowledged} elapsed={self.elapsed:.1f}s>"
        )


def _cloud_clock_offset_ms(cloud: Any) -> int:
    """How far the cloud's time is ahead of the wall clock (a local cloud's may be moved)."""
    now = getattr(cloud, "now", None)
    return _clock_offset_ms(cloud) if callable(now) else 0


def _parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    if shard == "auto":
        # Started by a scheduler (Kubernetes Indexed Job, Slurm array, Azure Batch).
        return shard_from_environment(os.environ)
    if isinstance(shard, str):
        first, sep, second = shard.partition("/")
        if not sep or not first.strip().isdigit() or not second.strip().isdigit():
            raise ConfigError(f"shard must look like 'i/n' (e.g. '0/4'), not {shard!r}")
        shard = (int(first), int(second))
    index, total = shard
    if total < 1 or not 0 <= index < total:
        raise ConfigError(f"shard {index}/{total}: need 0 <= i < n")
    return index, total


class Fleet:
    """Many simulated devices, each with its own identity, through DPS to their hubs.

    ``Fleet(dps, authority=ca, count=1_000, prefix="sensor-", telemetry=TelemetryPlan(...))``
    issues one X.509 certificate per device from ``authority`` (registration ids
    ``sensor-00000``, ``sensor-00001``, ...), or reuses those already in ``certificates_dir``
    (without ``authority``, every device's certificate and key must be there: a machine that
    runs the fleet then never holds the CA's key); with ``group_key`` instead, devices use keys
    derived from a symmetric-key enrollment group.
    ``run()`` provisions them with DPS's pacing (retry-after, at most 5 polls per 10 s),
    connects each to the hub it was assigned, runs the telemetry plan and returns a
    :class:`FleetReport`. ``concurrency`` bounds the devices dialling and handshaking at once
    (DPS or hub); a device waiting for its next poll gives its slot back, so Azure's seconds
    of ``retry-after`` do not cap the rate at ``concurrency`` devices per retry-after.

    ``shard="i/n"`` runs the i-th of n equal slices of the id range, so several machines can
    run one fleet against Azure; ``shard="auto"`` reads ``i`` and ``n`` from the scheduler
    that started the process (a Kubernetes Indexed Job, a Slurm job array, Azure Batch: see
    :func:`~dpskit.fleet_shards.shard_from_environment`). Each shard's
    :meth:`FleetReport.save` into a shared folder, then :meth:`FleetReport.load` of the
    folder (or ``dpskit fleet merge``), gives the whole fleet's report. ``run(executor=...)``
    runs every shard at once on an executor's workers and gives that report directly.

    On the emulator, ``pace_like_azure=True`` applies Azure's registration quota (1,000 per
    minute per DPS), optionally ``time_compression`` times faster. That rate is one DPS's,
    shared by every device of the fleet: a run over an executor sets it once on the DPS all
    its workers register with, and a scheduler's shard ``i/n`` takes its share, 1/n of it, on
    the emulator it runs.

    ``transport="websockets"`` runs every device over MQTT over WebSockets (port 443 on Azure,
    the local cloud's :attr:`~dpskit.LocalCloud.web_port`), and ``proxy`` tunnels every
    connection through an HTTP proxy, as devices behind a corporate firewall would.

    ``issue_certificates=True`` registers every device with a CSR (a new ``algorithm`` key;
    the certificate or group key above stays the onboarding credential) and connects it to its
    hub with the certificate DPS issued (the enrollment needs a certificate policy);
    :meth:`rollover` is a run in which every device also renews that certificate through its
    hub. The report's device frame then has ``certificate_not_after``, ``renewed``,
    ``renewal_error`` and ``renewal_error_code``. SAS tokens are signed in the local cloud's
    time (``now()``), moved or not.
    """

    def __init__(
        self,
        dps: Dps,
        *,
        count: int,
        authority: CertificateAuthority | None = None,
        group_key: str | EnrollmentGroup | None = None,
        prefix: str = "sensor-",
        telemetry: TelemetryPlan | None = None,
        concurrency: int = 64,
        seed: int | None = None,
        certificates_dir: str | os.PathLike[str] | None = None,
        shard: str | tuple[int, int] | None = None,
        algorithm: str = "ec-p256",
        payload: Any = None,
        max_in_flight: int = 32,
        provision_timeout: float = 120.0,
        pace_like_azure: bool = False,
        time_compression: float = 1.0,
        record_messages: bool = True,
        start_together: bool = True,
        worker_threads: int | None = None,
        transport: Transport = "mqtt",
        proxy: str | None = None,
        issue_certificates: bool = False,
    ) -> None:
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"count must be a positive integer, not {count!r}")
        if authority is not None and group_key is not None:
            raise ConfigError("give the fleet either an authority (X.509) or a group_key")
        if authority is None and group_key is None and certificates_dir is None:
            raise ConfigError(
                "give the fleet an authority (X.509), a certificates_dir holding every device's "
                "certificate and key, or a group_key"
            )
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        if not 1 <= max_in_flight <= 65_535:
            raise ConfigError(f"max_in_flight must be 1..65535, not {max_in_flight}")
        if not (math.isfinite(time_compression) and time_compression > 0):
            raise ConfigError(f"time_compression must be positive, not {time_compression}")
        self.dps = dps
        self.count = count
        self.authority = authority
        if isinstance(group_key, EnrollmentGroup):
            if not group_key.primary_key:
                raise ConfigError(
                    f"enrollment group {group_key.enrollment_group_id!r} has no symmetric key"
                )
            group_key = group_key.primary_key
        self._group_key = group_key
        self.prefix = prefix
        self.telemetry = telemetry
        if seed is not None and telemetry is not None and telemetry.seed != seed:
            self.telemetry = dataclasses.replace(telemetry, seed=seed)
        self.concurrency = concurrency
        self.certificates_dir = Path(certificates_dir) if certificates_dir is not None else None
        self.shard = _parse_shard(shard)
        self._seed = seed
        self.algorithm = algorithm
        self.payload = payload
        self.max_in_flight = max_in_flight
        self.provision_timeout = provision_timeout
        self.pace_like_azure = pace_like_azure
        self.time_compression = time_compression
        self.record_messages = record_messages
        self.start_together = start_together
        self.worker_threads = worker_threads
        transport_port(transport)  # refuses a transport that does not exist, now
        self.transport: Transport = transport
        self.proxy = proxy
        self.issue_certificates = issue_certificates
        self._rollover = False
        self._certificates: list[DeviceCertificate] | None = None

    @property
    def x509(self) -> bool:
        """Whether the devices attest with X.509 certificates (else a group's derived keys)."""
        return self._group_key is None

    @property
    def indexes(self) -> range:
        """The device positions this process runs (all of them, or its shard's slice)."""
        if self.shard is None:
            return range(self.count)
        index, total = self.shard
        return range(index * self.count // total, (index + 1) * self.count // total)

    @property
    def registration_ids(self) -> list[str]:
        """The registration ids this process runs, e.g. ``sensor-00042``."""
        return _registration_ids(self.prefix, self.count, self.indexes)

    def certificates(self) -> list[DeviceCertificate]:
        """The devices' certificates: loaded from ``certificates_dir`` where present, issued
        in bulk (and saved there, keys 0600) where not."""
        if not self.x509:
            raise ConfigError("a symmetric-key fleet has no certificates")
        if self._certificates is not None:
            return self._certificates
        self._certificates = device_certificates(
            self.authority,
            self.registration_ids,
            algorithm=self.algorithm,
            folder=self.certificates_dir,
        )
        return self._certificates

    def run(
        self,
        *,
        progress: bool | None = None,
        on_progress: Callable[[FleetProgress], None] | None = None,
        executor: SubmitsWork | None = None,
        shards: int | None = None,
    ) -> FleetReport:
        """Runs the fleet and returns its report. ``progress``: a live line in terminals and
        notebooks (``None``: when one is attached). ``on_progress`` is called with a
        :class:`FleetProgress` about five times a second. Ctrl-C (or a notebook interrupt)
        stops every device and raises ``KeyboardInterrupt``.

        With ``executor`` (anything with ``concurrent.futures.Executor``'s ``submit``: a
        ``ProcessPoolExecutor``, a Dask ``distributed.Client``, Ray's executor), the fleet is
        split into ``shards`` slices (default: the executor's worker count), each run by a
        worker on its own runtime (``concurrency`` and ``worker_threads`` apply to each; a
        local pool's workers get this machine's cores shared out unless ``worker_threads``
        says otherwise), and the report is the one a single process would have
        given: same devices, ids, hubs, outcomes and messages (with the same plan and seed),
        times counted from the earliest shard's start, :attr:`FleetReport.shard_runs` saying
        where each shard ran. This process talks to the cloud (hubs, pacing, refusals); the
        workers only need the ``dpskit`` package and a route to DPS and the hubs. Each worker
        issues its devices' certificates, or reads them from ``certificates_dir`` (a folder
        every worker sees); only when that folder lacks some does the issuing CA's key travel
        to the workers with their task (over the executor's channel: give a remote Dask
        cluster TLS). Progress counts the shards as they finish. A shard that fails raises
        its worker's error, with a note naming the shard. Ctrl-C stops the wait and cancels
        the shards not started; executors cannot stop a task that runs, so shards already
        running finish their plan on their workers (shut the pool down or restart the
        cluster's workers to stop them at once)."""
        if executor is not None:
            return self._run_on_executor(executor, shards, progress, on_progress)
        if shards is not None:
            raise ConfigError("shards= splits the fleet over an executor: pass executor= too")
        session = _RunSession(self, progress, on_progress)
        try:
            while not session.run.wait(0.2):
                session.report_progress()
        except BaseException:
            session.cancel()
            raise
        return session.finish()

    def rollover(
        self,
        *,
        progress: bool | None = None,
        on_progress: Callable[[FleetProgress], None] | None = None,
    ) -> FleetReport:
        """A certificate rollover: :meth:`run` (provisioned with CSRs, connected with the
        issued certificates) in which every device, once connected, renews its certificate
        through its hub before its telemetry plan. The report counts
        :attr:`FleetReport.renewals` and :attr:`FleetReport.renewal_failures`, and
        :meth:`FleetReport.expiring_within` the devices left on certificates about to
        expire. Needs ``issue_certificates=True``."""
        if not self.issue_certificates:
            raise ConfigError("a rollover renews issued certificates: use issue_certificates=True")
        self._rollover = True
        try:
            return self.run(progress=progress, on_progress=on_progress)
        finally:
            self._rollover = False

    async def run_async(
        self,
        *,
        progress: bool | None = None,
        on_progress: Callable[[FleetProgress], None] | None = None,
        executor: SubmitsWork | None = None,
        shards: int | None = None,
    ) -> FleetReport:
        """:meth:`run` for code already in an event loop (``await fleet.run_async()`` in a
        notebook): other tasks keep running meanwhile. Cancelling the awaiting task stops
        every device (over an ``executor``: stops the wait and cancels the shards not
        started, as Ctrl-C does in :meth:`run`)."""
        if executor is not None:
            stop = threading.Event()
            waiting = asyncio.ensure_future(
                asyncio.to_thread(
                    self._run_on_executor, executor, shards, progress, on_progress, stop
                )
            )
            try:
                return await asyncio.shield(waiting)
            except BaseException:
                # The thread sees the event within a tenth of a second, cancels the shards
                # not started and lifts the pacing: wait for that before giving up.
                stop.set()
                await asyncio.wait([waiting])
                if not waiting.cancelled():
                    # Retrieved: the thread's CancelledError is this cancellation's echo.
                    waiting.exception()
                raise
        if shards is not None:
            raise ConfigError("shards= splits the fleet over an executor: pass executor= too")
        session = _RunSession(self, progress, on_progress)
        try:
            while not session.run.wait(0):
                await asyncio.sleep(0.2)
                session.report_progress()
        except BaseException:
            session.cancel()
            raise
        return session.finish()

    def _settings(
        self, indexes: range | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The engine's settings and the custom fields' values of the devices at ``indexes``
        (this process's, by default), as the binding takes them."""
        if self.transport == "websockets":
            # Every resource serves WebSockets on the one web port (443 on Azure).
            dps_port = hub_port = self.dps._cloud._web_port()
        else:
            dps_port, hub_port = self.dps.device_port, self.dps._cloud._device_port()
        settings: dict[str, Any] = {
            "dps_host": self.dps.device_host,
            "dps_port": dps_port,
            "id_scope": self.dps.id_scope,
            "hub_port": hub_port,
            "via": {"transport": self.transport, "proxy": self.proxy},
            "concurrency": self.concurrency,
            "provision_timeout": self.provision_timeout,
            "max_in_flight": self.max_in_flight,
            "start_together": self.start_together,
            "record_messages": self.record_messages,
            "payload": self.payload,
            "issue_certificates": self.issue_certificates,
            "renew_certificates": self._rollover,
            "key_algorithm": self.algorithm,
            "clock_offset_ms": _cloud_clock_offset_ms(self.dps._cloud),
        }
        custom_values = None
        if self.telemetry is not None:
            settings["plan"] = self.telemetry._spec(self.telemetry.start)
            indexes = self.indexes if indexes is None else indexes
            ids = _registration_ids(self.prefix, self.count, indexes)
            devices = list(zip(indexes, ids, strict=True))
            custom = self.telemetry._custom_values(devices)
            custom_values = custom or None
        return settings, custom_values

    def _run_on_executor(
        self,
        executor: SubmitsWork,
        shards: int | None,
        progress: bool | None,
        on_progress: Callable[[FleetProgress], None] | None,
        stop: threading.Event | None = None,
    ) -> FleetReport:
        if self.shard is not None:
            raise ConfigError(
                f"this fleet is shard {self.shard[0]}/{self.shard[1]}; an executor runs a "
                f"whole fleet (leave shard unset)"
            )
        if self._rollover:
            raise ConfigError("a rollover runs in one process: call rollover() without executor")
        refuse_forking(executor)
        total = shards if shards is not None else worker_count(executor)
        if total is None:
            raise ConfigError(
                f"cannot tell how many workers {type(executor).__name__} has: pass shards=N"
            )
        if not isinstance(total, int) or not 1 <= total <= self.count:
            raise ConfigError(f"shards must be 1..{self.count} (the devices), not {total!r}")
        # Every shard registers with the one DPS: the emulator's quota on it is shared by
        # all of them, as Azure's is, so it is set once here at the whole rate.
        display = _ProgressDisplay(progress)
        side = _CloudSide(self, share=1)
        begun = time.monotonic()
        finished: list[FleetProgress] = []
        last = [0.0]

        def show(force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - last[0] < 0.2:
                return
            last[0] = now
            snapshot = _progress_of(finished, self.count, total, now - begun)
            display.update(snapshot)
            if on_progress is not None:
                on_progress(snapshot)

        def on_done(_index: int, part: ShardPart) -> None:
            finished.append(_progress_of_part(part))
            show(force=True)

        try:
            futures: list[Any] = []
            try:
                for task in self._shard_tasks(total, side, executor):
                    futures.append(executor.submit(run_shard, task))
            except BaseException:
                # An executor that refuses a task midway (shut down, full) runs none of them.
                for future in futures:
                    future.cancel()
                raise
            parts = collect(futures, on_done, show, stop=stop)
            refusals = side.refusals()
        finally:
            side.close()
            display.close()
        return FleetReport._merged(parts, refusals=refusals)

    def _shard_tasks(
        self, total: int, side: _CloudSide, executor: SubmitsWork | None = None
    ) -> list[ShardTask]:
        """The workers' tasks: the engine's settings, each shard's custom values, and the
        credential (the CA's key only when the shared folder lacks a certificate)."""
        chain_pem = key_pem = None
        folder = None
        if self.certificates_dir is not None:
            # Workers may run elsewhere in the file system's tree: a path that means one place.
            folder = str(self.certificates_dir.resolve())
        if self.authority is not None and missing_certificates(
            self.certificates_dir, _registration_ids(self.prefix, self.count, range(self.count))
        ):
            chain_pem = self.authority.full_chain_pem
            key_pem = self.authority.private_key_pem
        record = {"run": self._identity(), "hubs": side.hubs, "pacing": side.pacing}
        run_id = uuid.uuid4().hex
        tasks = []
        threads = self.worker_threads
        local_workers = worker_count(executor) if isinstance(executor, _LOCAL_POOLS) else None
        if threads is None and local_workers is not None:
            # Workers of a local pool share this machine's cores: a runtime thread per core in
            # each would oversubscribe them (measured: 0.84x the devices/s of one process with
            # three such workers on two cores, 0.93x with a thread each).
            threads = max(1, (os.cpu_count() or 1) // min(total, local_workers))
        for index in range(total):
            indexes = range(index * self.count // total, (index + 1) * self.count // total)
            settings, custom = self._settings(indexes)
            tasks.append(
                ShardTask(
                    run_id=run_id,
                    index=index,
                    shards=total,
                    fleet_size=self.count,
                    prefix=self.prefix,
                    settings=settings,
                    trust_pem=self.dps._cloud.trust_pem,
                    custom=custom,
                    algorithm=self.algorithm,
                    certificates_dir=folder,
                    worker_threads=threads,
                    record=record,
                    x509=self.x509,
                    authority_chain_pem=chain_pem,
                    authority_key_pem=key_pem,
                    group_key=self._group_key,
                )
            )
        return tasks

    def _identity(self) -> dict[str, Any]:
        """What makes two shards parts of one run: the fleet (size, ids, credential kind, DPS),
        the telemetry plan and seed, and the settings that change what devices do. Not the
        shard, the concurrency or the machine."""
        plan = self.telemetry
        telemetry = None
        if plan is not None:
            fields: dict[str, Any] = {}
            for name, generator in plan.fields.items():
                if isinstance(generator, Signal):
                    fields[name] = generator._field(name)
                else:
                    # A custom generator's code cannot be compared: its name stands for it.
                    module = getattr(generator, "__module__", "?")
                    fields[name] = f"custom {module}.{getattr(generator, '__qualname__', '?')}"
            telemetry = {
                "interval": plan.interval,
                "duration": plan.duration,
                "count": plan.count,
                "jitter": plan.jitter,
                "time_scale": plan.time_scale,
                "start": None if plan.start is None else plan.start.isoformat(),
                "dropout_rate": plan.dropout_rate,
                "duplicate_rate": plan.duplicate_rate,
                "fields": fields,
            }
        return {
            "devices": self.count,
            "prefix": self.prefix,
            "credential": "x509" if self.x509 else "symmetric-key",
            "dps": self.dps.name,
            "id_scope": self.dps.id_scope,
            "seed": plan.seed if plan is not None else self._seed,
            "telemetry": telemetry,
            "payload": None if self.payload is None else repr(self.payload),
            "transport": self.transport,
            "issue_certificates": self.issue_certificates,
            "rollover": self._rollover,
            "record_messages": self.record_messages,
            "pace_like_azure": self.pace_like_azure,
            "time_compression": self.time_compression,
        }

    def __repr__(self) -> str:
        kind = "x509" if self.x509 else "symmetric-key"
        return f"<Fleet {kind} count={self.count} prefix={self.prefix!r} dps={self.dps.name!r}>"


def _refusals_between(before: HubUsage, after: HubUsage) -> _Refusals | None:
    """The 429s by operation and the quota refusals a hub's presets added between two reads
    (None where the cloud does not count them: Azure)."""
    if (
        before.throttled is None
        or after.throttled is None
        or before.quota_refusals is None
        or after.quota_refusals is None
    ):
        return None
    throttled = {op: n - before.throttled.get(op, 0) for op, n in after.throttled.items()}
    return throttled, after.quota_refusals - before.quota_refusals


def _progress_of_part(part: ShardPart) -> FleetProgress:
    """What a finished shard adds to the progress line."""
    devices = part.columns["devices"]
    outcomes = devices["outcome"]
    return FleetProgress(
        total=len(outcomes),
        provisioned=sum(1 for hub in devices["assigned_hub"] if hub),
        connected=sum(1 for ms in devices["connect_ms"] if ms is not None),
        failed=sum(1 for outcome in outcomes if outcome != "completed"),
        finished=len(outcomes),
        sent=sum(devices["sent"]),
        acknowledged=sum(devices["acknowledged"]),
        retries=sum(devices["provision_retries"]) + sum(devices["connect_retries"]),
        elapsed=0.0,
    )


def _progress_of(
    finished: Sequence[FleetProgress], total: int, shards: int, elapsed: float
) -> FleetProgress:
    """The progress line of a run over an executor: the finished shards' counts."""

    def summed(name: str) -> int:
        return sum(int(getattr(p, name)) for p in finished)

    return FleetProgress(
        total=total,
        provisioned=summed("provisioned"),
        connected=summed("connected"),
        failed=summed("failed"),
        finished=summed("finished"),
        sent=summed("sent"),
        acknowledged=summed("acknowledged"),
        retries=summed("retries"),
        elapsed=elapsed,
        shards_done=len(finished),
        shards=shards,
    )


class _CloudSide:
    """What a run does to the cloud around its devices, in the process that talks to it: the
    hubs' names read, Azure's pacing set on the DPS (``share`` of its rate: a scheduler's shard
    takes 1/n) and lifted after, the hubs' refusals counted."""

    def __init__(self, fleet: Fleet, *, share: int) -> None:
        self._fleet = fleet
        self._lifted = False
        self.hubs = {link.host_name: link.hub for link in fleet.dps.linked_hubs()}
        self.pacing: float | None = None
        # What the hubs' presets had refused before the run, to count the run's own refusals.
        self._usage_before = self._usage()
        # Last: nothing after it can fail and leave the DPS paced with no run to lift it.
        if fleet.pace_like_azure:
            # Refused outside the emulator: Azure paces registrations itself.
            rate = AZURE_REGISTRATIONS_PER_MINUTE * fleet.time_compression / share
            fleet.dps.set_registration_quota(max(1, round(rate)))
            self.pacing = fleet.time_compression

    def refusals(self) -> dict[str, _Refusals] | None:
        """What the hubs' presets refused since the run began (None where not counted)."""
        before = self._usage_before
        after = self._usage() if before is not None else None
        if before is None or after is None:
            return None
        between = {
            name: _refusals_between(before[name], after[name]) for name in before if name in after
        }
        return {name: r for name, r in between.items() if r is not None}

    def close(self) -> None:
        """Lifts the pacing (once)."""
        if self._lifted:
            return
        self._lifted = True
        if self.pacing is not None:
            self._fleet.dps.set_registration_quota(None)

    def _usage(self) -> dict[str, HubUsage] | None:
        """Each linked hub's usage where the emulator runs in this process, else None (Azure,
        or an emulator in another process: ``usage()`` reads the emulator's memory)."""
        cloud = self._fleet.dps._cloud
        if not isinstance(cloud, LocalCloud):
            return None
        return {name: cloud.hub(name).usage() for name in sorted(set(self.hubs.values()))}


class _RunSession:
    """One run of a fleet in this process from start to report: what ``run`` and
    ``run_async`` share (the engine started, the progress shown, the cloud side set up and
    closed)."""

    def __init__(
        self,
        fleet: Fleet,
        progress: bool | None,
        on_progress: Callable[[FleetProgress], None] | None,
    ) -> None:
        self._fleet = fleet
        self._on_progress = on_progress
        self._closed = False
        settings, custom = fleet._settings()
        certificates = fleet.certificates() if fleet.x509 else None
        # A scheduler's shard paces its own slice: it takes its share of the DPS's rate.
        share = 1 if fleet.shard is None else fleet.shard[1]
        self._display = _ProgressDisplay(progress)
        self._side = _CloudSide(fleet, share=share)
        # One file descriptor per device connection.
        _raise_open_file_limit()
        self._begun = time.monotonic()
        try:
            self.run = FleetRun(
                settings,
                fleet.dps._cloud.trust_pem,
                fleet.registration_ids,
                list(fleet.indexes),
                certificates=certificates,
                group_key=fleet._group_key,
                custom=custom,
                worker_threads=fleet.worker_threads,
            )
        except BaseException:
            self._close()
            raise

    def report_progress(self) -> None:
        snapshot = FleetProgress(*self.run.progress(), elapsed=time.monotonic() - self._begun)
        self._display.update(snapshot)
        if self._on_progress is not None:
            self._on_progress(snapshot)

    def cancel(self) -> None:
        """Stops every device and waits for them (they end within a few seconds)."""
        self.run.cancel()
        while not self.run.wait(1.0):
            pass
        self._close()

    def finish(self) -> FleetReport:
        try:
            self.report_progress()
            columns = self.run.result()
            refusals = self._side.refusals()
        finally:
            self._close()
        fleet = self._fleet
        here = ShardRun(
            shard=fleet.shard or (0, 1),
            devices=len(fleet.indexes),
            started_s=0.0,
            elapsed=float(columns["elapsed"]),
            host=socket.gethostname(),
            pid=os.getpid(),
            peak_rss_bytes=peak_rss_bytes(),
            source="this process",
        )
        return FleetReport(
            columns,
            hubs=self._side.hubs,
            pacing=self._side.pacing,
            shard=fleet.shard,
            refusals=refusals,
            run=fleet._identity(),
            shard_runs=(here,),
        )

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._display.close()
        self._side.close()
