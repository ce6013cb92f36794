"""Fleets split into shards: which shard this process runs (read from the scheduler's
environment), and the shards' parts, saved or returned by workers, put back together as one run.

:func:`shard_from_environment` is what ``Fleet(shard="auto")`` and ``dpskit fleet --shard
auto`` use. ``FleetReport.save`` writes, next to the device and message frames, a sidecar
``<stem>.run.json`` with what a merge needs (the run's identity, the shard, the run's times,
hubs, pacing and refusals); ``FleetReport.load`` and ``dpskit fleet merge`` read the shards back
through :func:`read_results` and :func:`merge_results`. Those and ``Fleet.run(executor=...)``,
whose workers return a :class:`ShardPart` each, merge through :func:`merge_parts`, which refuses
shards of different runs and missing, duplicated or inconsistent shards.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dpskit.errors import ConfigError

__all__ = ["SIDECAR_SUFFIX", "shard_from_environment"]

#: The sidecar ``FleetReport.save`` writes next to the device frame: ``run.parquet`` →
#: ``run.run.json``.
SIDECAR_SUFFIX = ".run.json"

_FORMAT = "dpskit.fleet-result"
_VERSION = 1

# Kubernetes sets JOB_COMPLETION_INDEX in every pod of an Indexed Job, but not the Job's
# completions count: the manifest passes it (the same number as spec.completions).
_KUBERNETES = ("JOB_COMPLETION_INDEX", "JOB_COMPLETIONS")
_SLURM = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
)
# Azure Batch sets AZ_BATCH_TASK_ID (a free-form name) and no index or count of its own: the
# job's tasks carry dpskit's pair in their environment settings.
_BATCH_MARK = "AZ_BATCH_TASK_ID"
_DPSKIT = ("DPSKIT_SHARD_INDEX", "DPSKIT_SHARD_COUNT")
_LOOKED_AT = (*_KUBERNETES, *_SLURM[:3], _BATCH_MARK, *_DPSKIT)


def _integer(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not text.isdigit():
        raise ConfigError(f"{name}={env[name]!r} is not a non-negative integer")
    return int(text)


def _required(env: Mapping[str, str], scheduler: str, present: str, needed: str, why: str) -> None:
    if needed not in env:
        raise ConfigError(f"{scheduler}: {present} is set but {needed} is not ({why})")


def shard_from_environment(env: Mapping[str, str]) -> tuple[int, int]:
    """The shard ``(i, n)`` a scheduler started this process as, read from ``env`` (pass
    ``os.environ``):

    - **Kubernetes Indexed Job**: ``JOB_COMPLETION_INDEX`` (set by Kubernetes) of
      ``JOB_COMPLETIONS``. Kubernetes exposes no completions count to the pod, so the Job's
      manifest sets ``JOB_COMPLETIONS`` to the same number as ``spec.completions``.
    - **Slurm job array**: ``SLURM_ARRAY_TASK_ID`` less ``SLURM_ARRAY_TASK_MIN`` (divided by
      ``SLURM_ARRAY_TASK_STEP`` for ``--array=0-30:10``) of ``SLURM_ARRAY_TASK_COUNT``. An
      array with gaps (``--array=1,3,7``) has no such index and is refused.
    - **Azure Batch**: Batch documents no task index or count (``AZ_BATCH_TASK_ID`` is a
      name), so dpskit's convention applies: each task's ``environmentSettings`` set
      ``DPSKIT_SHARD_INDEX`` and ``DPSKIT_SHARD_COUNT`` (the count may sit in the job's
      ``commonEnvironmentSettings``). The pair works under any other launcher too.

    Raises :class:`~dpskit.errors.ConfigError`, naming the variables, when no scheduler's
    variables are set, when they are incomplete or out of range, or when two schedulers'
    variables disagree."""
    found: list[tuple[str, tuple[int, int], str]] = []
    if _KUBERNETES[0] in env:
        _required(
            env,
            "Kubernetes Indexed Job",
            _KUBERNETES[0],
            _KUBERNETES[1],
            "Kubernetes exposes no completions count: set it in the Job's manifest to "
            "spec.completions",
        )
        shard = (_integer(env, _KUBERNETES[0]), _integer(env, _KUBERNETES[1]))
        found.append(("Kubernetes", shard, " of ".join(_KUBERNETES)))
    if _SLURM[0] in env:
        for needed in _SLURM[1:3]:
            _required(env, "Slurm job array", _SLURM[0], needed, "Slurm sets it for arrays")
        task, count, low = (_integer(env, name) for name in _SLURM[:3])
        step = _integer(env, _SLURM[4]) if _SLURM[4] in env else 1
        position = task - low
        names = f"{_SLURM[0]}={task}, {_SLURM[2]}={low}, {_SLURM[1]}={count}"
        evenly = step >= 1 and position >= 0 and position % step == 0
        if evenly and _SLURM[3] in env:
            evenly = low + (count - 1) * step == _integer(env, _SLURM[3])
        if not evenly:
            raise ConfigError(
                f"Slurm job array: {names} (step {step}) is not an evenly stepped range "
                f"(--array=A-B or A-B:S): no shard index follows from it"
            )
        found.append(("Slurm", (position // step, count), names))
    if _DPSKIT[0] in env or _DPSKIT[1] in env or _BATCH_MARK in env:
        where = "Azure Batch" if _BATCH_MARK in env else "dpskit"
        for present, needed in (
            (_BATCH_MARK, _DPSKIT[0]),
            *zip(_DPSKIT, reversed(_DPSKIT), strict=True),
        ):
            if present in env:
                _required(
                    env,
                    where,
                    present,
                    needed,
                    "Batch has no task index or count: set DPSKIT_SHARD_INDEX and "
                    "DPSKIT_SHARD_COUNT in the tasks' environment settings"
                    if where == "Azure Batch"
                    else "dpskit reads the two together",
                )
        shard = (_integer(env, _DPSKIT[0]), _integer(env, _DPSKIT[1]))
        found.append((where, shard, " of ".join(_DPSKIT)))
    if not found:
        raise ConfigError(
            "--shard auto: no scheduler's shard variables are set (looked at "
            + ", ".join(_LOOKED_AT)
            + ")"
        )
    for scheduler, (index, total), names in found:
        if total < 1 or not 0 <= index < total:
            raise ConfigError(f"{scheduler}: shard {index} of {total} ({names}): need 0 <= i < n")
    if len({shard for _, shard, _ in found}) > 1:
        seen = "; ".join(f"{s}: {i}/{n} ({names})" for s, (i, n), names in found)
        raise ConfigError(f"--shard auto: the schedulers' variables disagree: {seen}")
    return found[0][1]


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short digest of a run's identity: two shards with the same one are of one run."""
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_path(target: Path) -> Path:
    """Where ``FleetReport.save(target)`` writes what a merge needs."""
    return target.with_name(f"{target.stem}{SIDECAR_SUFFIX}")


def write_sidecar(target: Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` (the run's identity, shard, times, hubs, pacing, refusals) next to
    the device frame ``target``."""
    identity = record.get("run")
    document = {
        "format": _FORMAT,
        "version": _VERSION,
        "suffix": target.suffix,
        "fingerprint": None if identity is None else fingerprint(identity),
        **record,
    }
    path = sidecar_path(target)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path


@dataclass
class ShardResult:
    """One saved result: its sidecar's record and where its frames are."""

    sidecar: Path
    devices_path: Path
    messages_path: Path
    record: dict[str, Any]

    @property
    def shard(self) -> tuple[int, int]:
        """``(i, n)``; a whole fleet is shard 0 of 1."""
        shard = self.record.get("shard")
        return (0, 1) if shard is None else (int(shard[0]), int(shard[1]))

    @property
    def name(self) -> str:
        """The device frame's path, as errors name the result."""
        return str(self.devices_path)


def _is_message_frame(path: Path) -> bool:
    return path.stem.endswith(".messages")


def _sidecars(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The sidecars named by ``paths``: a folder gives every result in it; a device frame
    gives its sidecar. A result without a sidecar is refused, never skipped."""
    if not paths:
        raise ConfigError("name at least one fleet result file or folder")
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file())
            inside = [p for p in entries if p.name.endswith(SIDECAR_SUFFIX)]
            frames = [
                p
                for p in entries
                if p.suffix.lower() in {".csv", ".parquet"} and not _is_message_frame(p)
            ]
            for frame in frames:
                if sidecar_path(frame) not in inside:
                    raise ConfigError(
                        f"{frame}: no {sidecar_path(frame).name} next to it (not a fleet result "
                        f"saved by FleetReport.save, or its sidecar was lost)"
                    )
            if not inside:
                raise ConfigError(f"{path}: no fleet results in this folder")
            found += inside
        elif path.name.endswith(SIDECAR_SUFFIX):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file")
            found.append(path)
        elif path.suffix.lower() in {".csv", ".parquet"}:
            if _is_message_frame(path):
                raise ConfigError(f"{path}: a message frame; name the device frame or its folder")
            if not path.is_file():
                raise ConfigError(f"{path}: no such file")
            sidecar = sidecar_path(path)
            if not sidecar.is_file():
                raise ConfigError(
                    f"{path}: no {sidecar.name} next to it (not a fleet result saved by "
                    f"FleetReport.save, or its sidecar was lost)"
                )
            found.append(sidecar)
        elif not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        else:
            raise ConfigError(f"{path}: not a fleet result (.csv, .parquet or {SIDECAR_SUFFIX})")
    # The same file named twice (a folder and a file in it) is one result, not a duplicate.
    unique: dict[Path, Path] = {}
    for sidecar in found:
        unique.setdefault(sidecar.resolve(), sidecar)
    return list(unique.values())


_RECORD_KEYS = ("run", "shard", "elapsed", "connect_phase", "started_unix", "hubs")


def read_results(paths: Sequence[str | os.PathLike[str]]) -> list[ShardResult]:
    """The results named by ``paths`` (files or folders), their sidecars parsed."""
    results = []
    for sidecar in _sidecars(paths):
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"{sidecar}: not a readable fleet result record: {error}") from None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ConfigError(f"{sidecar}: not a fleet result record (format {_FORMAT!r})")
        if record.get("version") != _VERSION:
            raise ConfigError(
                f"{sidecar}: fleet result version {record.get('version')!r}, this dpskit "
                f"reads version {_VERSION}"
            )
        missing = [key for key in _RECORD_KEYS if key not in record]
        if missing:
            raise ConfigError(f"{sidecar}: the record lacks {', '.join(missing)}")
        shard = record["shard"]
        if shard is not None and not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(isinstance(x, int) for x in shard)
            and 0 <= shard[0] < shard[1]
        ):
            raise ConfigError(f"{sidecar}: shard {shard!r} is not [i, n] with 0 <= i < n")
        suffix = str(record.get("suffix", ""))
        if suffix.lower() not in {".csv", ".parquet"}:
            raise ConfigError(f"{sidecar}: suffix {suffix!r} is not .csv or .parquet")
        stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
        devices = sidecar.with_name(f"{stem}{suffix}")
        messages = sidecar.with_name(f"{stem}.messages{suffix}")
        for frame in (devices, messages):
            if not frame.is_file():
                raise ConfigError(f"{sidecar}: its frame {frame.name} is missing")
        results.append(ShardResult(sidecar, devices, messages, record))
    return results


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


class _Named(Protocol):
    """What the checks read of a shard, saved (:class:`ShardResult`) or returned by a worker
    (:class:`ShardPart`)."""

    @property
    def name(self) -> str: ...

    @property
    def record(self) -> dict[str, Any]: ...

    @property
    def shard(self) -> tuple[int, int]: ...


_Part = TypeVar("_Part", bound=_Named)


def check_one_run(results: Sequence[_Part]) -> tuple[int, list[_Part]]:
    """The shard count and the results in shard order, after refusing foreign shards (another
    run's identity), inconsistent counts, duplicated and missing shards."""
    by_run: dict[str, list[_Part]] = {}
    for result in results:
        identity = result.record["run"]
        if identity is None and len(results) > 1:
            raise ConfigError(f"{result.name}: records no run identity, so it cannot be merged")
        by_run.setdefault(fingerprint(identity or {}), []).append(result)
    if len(by_run) > 1:
        flat = [(group, _flatten(group[0].record["run"])) for group in by_run.values()]
        # The settings in which the runs differ, each run shown with its own values.
        keys = sorted({k for _, f in flat for k in f if len({repr(g.get(k)) for _, g in flat}) > 1})
        described = []
        for group, settings in flat:
            names = ", ".join(r.name for r in group)
            shown = ", ".join(f"{k}={settings.get(k)!r}" for k in keys)
            described.append(f"{names} ({shown})")
        raise ConfigError("shards of different runs (foreign shards): " + "; ".join(described))
    counts: dict[int, list[str]] = {}
    for result in results:
        counts.setdefault(result.shard[1], []).append(result.name)
    if len(counts) > 1:
        shown = "; ".join(f"n={n}: {', '.join(names)}" for n, names in sorted(counts.items()))
        raise ConfigError(f"shards disagree on the shard count: {shown}")
    (total,) = counts
    by_index: dict[int, list[_Part]] = {}
    for result in results:
        by_index.setdefault(result.shard[0], []).append(result)
    duplicated = {i: group for i, group in by_index.items() if len(group) > 1}
    if duplicated:
        shown = "; ".join(
            f"shard {i}/{total}: {', '.join(r.name for r in group)}"
            for i, group in sorted(duplicated.items())
        )
        raise ConfigError(f"duplicate shards: {shown}")
    missing = [i for i in range(total) if i not in by_index]
    if missing:
        have = ", ".join(f"{i}/{total} {by_index[i][0].name}" for i in sorted(by_index))
        lost = ", ".join(f"{i}/{total}" for i in missing)
        raise ConfigError(f"missing shards {lost} (found {have})")
    return total, [by_index[i][0] for i in range(total)]


# The device frame's columns as the engine gives them, by kind (``FleetReport.to_pandas``
# adds ``started_at`` and ``hub``, derived, and shows ``certificate_not_after`` as a time).
_DEVICE_KINDS: dict[str, str] = {
    "index": "int",
    "registration_id": "text",
    "outcome": "text",
    "error": "optional text",
    "error_code": "optional int",
    "assigned_hub": "optional text",
    "device_id": "optional text",
    "started_s": "float",
    "provision_ms": "optional float",
    "connect_ms": "optional float",
    "provision_retries": "int",
    "connect_retries": "int",
    "reconnects": "int",
    "sent": "int",
    "acknowledged": "int",
    "dropouts": "int",
    "duplicates": "int",
    "bytes_sent": "int",
    "first_sent_s": "optional float",
    "last_sent_s": "optional float",
    "certificate_not_after": "optional time",
    "renewed": "bool",
    "renewal_error": "optional text",
    "renewal_error_code": "optional int",
}
_DEVICE_COLUMNS = tuple(_DEVICE_KINDS)
# Seconds from the run's start: a merge moves them to the earliest shard's start.
_SHIFTED = ("started_s", "first_sent_s", "last_sent_s")
_MESSAGE_COLUMNS = ("device_id", "seq", "sent_at", "latency_ms", "anomaly", "duplicate")
_TEXT_COLUMNS = {name: str for name, kind in _DEVICE_KINDS.items() if kind.endswith("text")}


def _pandas() -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as error:
        raise ConfigError("reading fleet results needs pandas: pip install pandas") from error


def _read_frame(path: Path, text_columns: Mapping[str, type]) -> Any:
    pd = _pandas()
    try:
        if path.suffix.lower() == ".csv":
            # Text stays text: a registration id such as "00042" is not the number 42.
            return pd.read_csv(path, dtype=dict(text_columns))
        return pd.read_parquet(path)
    except ImportError as error:
        raise ConfigError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from error
    except Exception as error:  # pandas and pyarrow raise many kinds for a broken file
        raise ConfigError(f"{path}: not a readable fleet frame: {error}") from None


def _column(frame: Any, path: Path, name: str, kind: str) -> list[Any]:
    """Column ``name`` as the engine gives it: Python values of ``kind``, None where missing
    (a CSV's empty cell, a parquet null or NaN), refused where a value is required."""
    missing = frame[name].isna().tolist()
    values = frame[name].tolist()
    out: list[Any] = []
    for row, value in enumerate(values):
        if missing[row]:
            if not kind.startswith("optional"):
                raise ConfigError(f"{path}: column {name!r} has no value in row {row}")
            out.append(None)
            continue
        try:
            if kind.endswith("int"):
                out.append(int(value))
            elif kind.endswith("float"):
                out.append(float(value))
            elif kind.endswith("text"):
                out.append(str(value))
            else:
                out.append(_boolean(value))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{path}: column {name!r} row {row}: {value!r} is not {kind.split()[-1]}"
            ) from None
    return out


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in {"true", "false"}:
            return value.strip().lower() == "true"
        raise ValueError(value)
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


def _read_devices(result: ShardResult) -> dict[str, list[Any]]:
    path = result.devices_path
    frame = _read_frame(path, _TEXT_COLUMNS)
    absent = [c for c in _DEVICE_COLUMNS if c not in frame.columns]
    if absent:
        raise ConfigError(f"{path}: not a fleet device frame (no {', '.join(absent)})")
    devices: dict[str, list[Any]] = {}
    for name, kind in _DEVICE_KINDS.items():
        if kind == "optional time":
            devices[name] = _unix_seconds(frame, path, name, optional=True)
        else:
            devices[name] = _column(frame, path, name, kind)
    return devices


def _unix_seconds(frame: Any, path: Path, name: str, *, optional: bool) -> list[Any]:
    pd = _pandas()
    try:
        times = pd.to_datetime(frame[name], utc=True)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: column {name!r} holds no times: {error}") from None
    seconds = ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).tolist()
    if not optional and any(math.isnan(s) for s in seconds):
        raise ConfigError(f"{path}: column {name!r} has rows without a time")
    if optional:
        return [None if math.isnan(s) else round(s) for s in seconds]
    return [float(s) for s in seconds]


def _read_messages(
    result: ShardResult, started_unix: float, positions: Mapping[str, int]
) -> dict[str, list[Any]]:
    """The message frame as the engine gives it: devices by their position in the shard,
    times counted from the shard's start."""
    path = result.messages_path
    frame = _read_frame(path, {"device_id": str, "message_id": str})
    absent = [c for c in _MESSAGE_COLUMNS if c not in frame.columns]
    if absent:
        raise ConfigError(f"{path}: not a fleet message frame (no {', '.join(absent)})")
    device = []
    for row, device_id in enumerate(frame["device_id"].tolist()):
        if device_id not in positions:
            raise ConfigError(f"{path}: row {row} names device {device_id!r}, not in this shard")
        device.append(positions[device_id])
    sent_at = _unix_seconds(frame, path, "sent_at", optional=False)
    # An unacknowledged message's latency is NaN, as the engine gives it.
    latency = [
        math.nan if v is None else v for v in _column(frame, path, "latency_ms", "optional float")
    ]
    return {
        "device": device,
        "seq": _column(frame, path, "seq", "int"),
        "sent_at_s": [s - started_unix for s in sent_at],
        "latency_ms": latency,
        "anomaly": _column(frame, path, "anomaly", "bool"),
        "duplicate": _column(frame, path, "duplicate", "bool"),
    }


def _registration_ids(prefix: str, count: int, indexes: range) -> list[str]:
    digits = max(5, len(str(count - 1)))
    return [f"{prefix}{i:0{digits}d}" for i in indexes]


@dataclass
class ShardPart:
    """One shard's outcome as a merge takes it: its record (what the sidecar holds) and the
    engine's columns, with times counted from the shard's own start and messages naming their
    device by its position in the shard. A worker of ``Fleet.run(executor=...)`` returns one;
    a saved result is read into one."""

    name: str
    record: dict[str, Any]
    columns: dict[str, dict[str, list[Any]]]

    @property
    def shard(self) -> tuple[int, int]:
        """``(i, n)``; a whole fleet is shard 0 of 1."""
        shard = self.record.get("shard")
        return (0, 1) if shard is None else (int(shard[0]), int(shard[1]))


def read_part(result: ShardResult) -> ShardPart:
    """A saved result's frames read back into the engine's columns."""
    devices = _read_devices(result)
    positions = {rid: i for i, rid in enumerate(devices["registration_id"])}
    messages = _read_messages(result, float(result.record["started_unix"]), positions)
    return ShardPart(result.name, result.record, {"devices": devices, "messages": messages})


@dataclass
class Merged:
    """What ``FleetReport`` is built from: the engine's columns and the run's context."""

    columns: dict[str, Any]
    hubs: dict[str, str]
    pacing: float | None
    refusals: dict[str, tuple[dict[str, int], int]] | None
    run: dict[str, Any] | None
    parts: list[dict[str, Any]]


_MESSAGE_FIELDS = ("device", "seq", "sent_at_s", "latency_ms", "anomaly", "duplicate")


def merge_results(results: Sequence[ShardResult]) -> Merged:
    """One run's columns from its shards' saved results: checked (:func:`check_one_run`)
    before any frame is read, then merged by :func:`merge_parts`."""
    check_one_run(results)
    return merge_parts([read_part(result) for result in results])


def merge_parts(parts: Sequence[ShardPart]) -> Merged:
    """One run's columns from its shards' parts (checked by :func:`check_one_run`): devices
    and messages in device order, times counted from the earliest start."""
    _total, ordered = check_one_run(parts)
    started = min(float(p.record["started_unix"]) for p in ordered)
    devices: dict[str, list[Any]] = {name: [] for name in _DEVICE_COLUMNS}
    # The engine also gives each message's size; a saved frame does not keep it.
    fields = [*_MESSAGE_FIELDS]
    if all("bytes" in p.columns["messages"] for p in ordered):
        fields.append("bytes")
    messages: dict[str, list[Any]] = {name: [] for name in fields}
    hubs: dict[str, str] = {}
    refusals: dict[str, tuple[dict[str, int], int]] | None = {}
    ends, connected = [], []
    for part in ordered:
        record = part.record
        shift = float(record["started_unix"]) - started
        own = part.columns["devices"]
        identity = record["run"]
        if identity is not None:
            count = int(identity["devices"])
            index, n = part.shard
            expected = _registration_ids(
                str(identity["prefix"]),
                count,
                range(index * count // n, (index + 1) * count // n),
            )
            if list(own["registration_id"]) != expected:
                raise ConfigError(
                    f"{part.name}: its devices are not shard {index}/{n}'s ids "
                    f"({len(own['registration_id'])} rows, {len(expected)} expected)"
                )
        offset = len(devices["registration_id"])
        for name in _DEVICE_COLUMNS:
            values = list(own[name])
            if name in _SHIFTED:
                values = [None if v is None else v + shift for v in values]
            devices[name] += values
        sent = part.columns["messages"]
        for name in fields:
            values = list(sent[name])
            if name == "device":
                values = [offset + v for v in values]
            elif name == "sent_at_s":
                values = [v + shift for v in values]
            messages[name] += values
        hubs.update({str(k): str(v) for k, v in dict(record["hubs"]).items()})
        ends.append(shift + float(record["elapsed"]))
        connected.append(shift + float(record["connect_phase"]))
        shard_refusals = record.get("refusals")
        if shard_refusals is None or refusals is None:
            refusals = None
        else:
            for hub, counts in dict(shard_refusals).items():
                throttled, quota = refusals.get(hub, ({}, 0))
                merged = dict(throttled)
                for op, n in dict(counts["throttled"]).items():
                    merged[op] = merged.get(op, 0) + int(n)
                refusals[hub] = (merged, quota + int(counts["quota_refusals"]))
    columns = {
        "devices": devices,
        "messages": messages,
        # One process would have measured from the first start to the last end: with shards
        # started together this is the longest shard's; with staggered shards it counts the
        # stagger, so rates over it are the fleet's, not one shard's.
        "elapsed": max(ends),
        "connect_phase": max(connected),
        # The shards' peaks need not coincide: their sum bounds the fleet's.
        "peak_waiting": sum(int(p.record.get("peak_waiting", 0)) for p in ordered),
        "started_unix": started,
    }
    pacing = ordered[0].record.get("pacing")
    return Merged(
        columns=columns,
        hubs=hubs,
        pacing=None if pacing is None else float(pacing),
        refusals=refusals,
        run=ordered[0].record["run"],
        parts=[
            _where(part, shift=float(part.record["started_unix"]) - started) for part in ordered
        ],
    )


def _where(part: ShardPart, *, shift: float) -> dict[str, Any]:
    """Where and how a shard ran, as :attr:`FleetReport.shards` lists it."""
    record = part.record
    index, count = part.shard
    return {
        "shard": (index, count),
        "devices": len(part.columns["devices"]["registration_id"]),
        "started_s": shift,
        "elapsed": float(record["elapsed"]),
        "host": record.get("host"),
        "pid": record.get("pid"),
        "peak_rss_bytes": record.get("peak_rss_bytes"),
        "source": part.name,
    }
