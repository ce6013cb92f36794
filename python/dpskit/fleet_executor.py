"""One fleet run by many workers: ``Fleet.run(executor=...)`` splits the fleet into shards,
runs each on a worker of any executor with ``concurrent.futures.Executor``'s ``submit`` (a
``ProcessPoolExecutor``, a Dask ``distributed.Client`` or its ``get_executor()``, Ray's
executor) and returns one :class:`~dpskit.FleetReport`, as if one process had run the fleet.

This process (the coordinator) does everything that talks to the cloud: it reads the DPS's
endpoints and linked hubs, sets and lifts the Azure pacing of the one DPS every shard shares,
counts the hubs' refusals and computes the custom fields' values. What it sends a worker is a
:class:`ShardTask`: plain, picklable data. The worker issues its devices' certificates (or reads
them from the shared ``certificates_dir``), runs its slice on its own Rust runtime and returns a
:class:`~dpskit.fleet_shards.ShardPart`. Workers need the ``dpskit`` package and a route to the
DPS and hubs; no cloud client, credential store or notebook state.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dpskit._native import CertificateAuthority, DeviceCertificate, FleetRun, credential_files
from dpskit.cloud import _raise_open_file_limit
from dpskit.errors import ConfigError
from dpskit.fleet_shards import ShardPart, _registration_ids

__all__ = [
    "ShardTask",
    "SubmitsWork",
    "device_certificates",
    "missing_certificates",
    "peak_rss_bytes",
    "run_shard",
]


class _Future(Protocol):
    """What the coordinator uses of a future (``concurrent.futures``, Dask and Ray agree)."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def cancel(self) -> bool: ...


class SubmitsWork(Protocol):
    """An executor as ``Fleet.run(executor=...)`` takes it: ``submit(fn, *args)`` returning a
    future with ``done()``, ``result()`` and ``cancel()``."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any: ...


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory in bytes, None where the OS does not tell
    (Windows)."""
    if sys.platform.startswith("linux"):
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a
        # spawned worker would report its parent's peak at the fork; VmHWM belongs to the
        # address space exec replaced.
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if sys.platform == "win32":
        return None
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # macOS reports ru_maxrss in bytes, the BSDs in kibibytes (getrusage(2) on each).
    return peak if sys.platform == "darwin" else peak * 1024


def _device_file_names(folder: Path, registration_ids: Sequence[str]) -> list[tuple[str, str]]:
    """The names of each device's full chain and key in ``folder``, by the core's one rule
    (``credential_files``). The rule is asked once, for the first id (it refuses a prefix that
    would leave the folder): a device's files are its id and the rule's suffixes, and asking
    for each of 100,000 devices would add a second and a half to the start."""
    if not registration_ids:
        return []
    first = registration_ids[0]
    files = credential_files(folder, first)
    chain, key = files["full_chain"].name, files["private_key"].name
    if not (chain.startswith(first) and key.startswith(first)):
        # A rule that does not append to the id: ask it for every device.
        return [
            (named["full_chain"].name, named["private_key"].name)
            for named in (credential_files(folder, i) for i in registration_ids)
        ]
    chain_suffix, key_suffix = chain[len(first) :], key[len(first) :]
    return [(f"{i}{chain_suffix}", f"{i}{key_suffix}") for i in registration_ids]


def missing_certificates(folder: Path | None, registration_ids: Sequence[str]) -> list[str]:
    """The devices of ``registration_ids`` whose full chain or key ``folder`` lacks (all of
    them without a folder), read with one listing of the folder."""
    if folder is None or not folder.is_dir():
        return list(registration_ids)
    present = {entry.name for entry in os.scandir(folder)}
    return [
        registration_id
        for registration_id, (chain, key) in zip(
            registration_ids, _device_file_names(folder, registration_ids), strict=True
        )
        if chain not in present or key not in present
    ]


def device_certificates(
    authority: CertificateAuthority | None,
    registration_ids: Sequence[str],
    *,
    algorithm: str,
    folder: Path | None,
) -> list[DeviceCertificate]:
    """The devices' certificates, in ``registration_ids``' order: read from ``folder`` where
    both the full chain and the key are there, issued in bulk by ``authority`` (and saved in
    ``folder``, keys 0600) where not."""
    missing = missing_certificates(folder, registration_ids)
    if missing and authority is None:
        raise ConfigError(
            f"{len(missing):,} of {len(registration_ids):,} devices have no certificate "
            f"and key in {folder} (first: {missing[0]}), and the fleet has no authority "
            f"to issue them"
        )
    loaded: dict[str, DeviceCertificate] = {}
    if folder is not None and len(missing) < len(registration_ids):
        absent = set(missing)
        for registration_id, (chain, key) in zip(
            registration_ids, _device_file_names(folder, registration_ids), strict=True
        ):
            if registration_id not in absent:
                loaded[registration_id] = DeviceCertificate.load(folder / chain, folder / key)
    if missing and authority is not None:  # without one, refused above
        issued = authority.issue_devices(missing, algorithm=algorithm, output_dir=folder)
        loaded.update(zip(missing, issued, strict=True))
    return [loaded[i] for i in registration_ids]


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to run one shard, as plain data (it crosses to the worker by
    pickle, over a pipe or the executor's network). Secrets it may carry, the issuing CA's key
    (only when ``certificates_dir`` does not already hold every device's certificate) and a
    symmetric group key, are left out of its ``repr``."""

    #: One per run: Dask names a task by a hash of its arguments and hands back a result it
    #: still holds for the same name, so a rerun of the same fleet must not look the same.
    run_id: str
    index: int
    shards: int
    fleet_size: int
    prefix: str
    #: The engine's settings (a proxy URL in them may hold a password: not in the repr).
    settings: dict[str, Any] = field(repr=False)
    trust_pem: str | None = field(repr=False)
    custom: dict[str, Any] | None = field(repr=False)
    algorithm: str
    certificates_dir: str | None
    worker_threads: int | None
    #: The sidecar record's run-wide fields: the run's identity, hubs, pacing.
    record: dict[str, Any] = field(repr=False)
    x509: bool
    authority_chain_pem: str | None = field(default=None, repr=False)
    authority_key_pem: str | None = field(default=None, repr=False)
    group_key: str | None = field(default=None, repr=False)

    @property
    def indexes(self) -> range:
        """The device positions of this shard."""
        count, n = self.fleet_size, self.shards
        return range(self.index * count // n, (self.index + 1) * count // n)


def run_shard(task: ShardTask) -> ShardPart:
    """Runs one shard on this worker and returns its part of the report (the function every
    worker is given: it must stay importable at module level)."""
    indexes = task.indexes
    ids = _registration_ids(task.prefix, task.fleet_size, indexes)
    certificates = None
    if task.x509:
        authority = None
        if task.authority_chain_pem is not None and task.authority_key_pem is not None:
            authority = CertificateAuthority.from_pem(
                task.authority_chain_pem, task.authority_key_pem
            )
        folder = None if task.certificates_dir is None else Path(task.certificates_dir)
        certificates = device_certificates(authority, ids, algorithm=task.algorithm, folder=folder)
    # One file descriptor per device connection, in this worker's process too.
    _raise_open_file_limit()
    run = FleetRun(
        task.settings,
        task.trust_pem,
        ids,
        list(indexes),
        certificates=certificates,
        group_key=task.group_key,
        custom=task.custom,
        worker_threads=task.worker_threads,
    )
    try:
        while not run.wait(0.5):
            pass
    except BaseException:
        # A worker told to stop (its pool shutting down) stops its devices first.
        run.cancel()
        while not run.wait(1.0):
            pass
        raise
    columns = run.result()
    record = {
        **task.record,
        "shard": [task.index, task.shards],
        "started_unix": columns["started_unix"],
        "elapsed": columns["elapsed"],
        "connect_phase": columns["connect_phase"],
        "peak_waiting": columns["peak_waiting"],
        "refusals": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    name = f"shard {task.index}/{task.shards} (pid {record['pid']} on {record['host']})"
    return ShardPart(name, record, {"devices": columns["devices"], "messages": columns["messages"]})


def refuse_forking(executor: Any) -> None:
    """Refuses a process pool that forks its workers: the child would inherit this process's
    Rust runtimes (the local cloud's, the REST client's) without their threads, and could
    hang on a lock a vanished thread held."""
    context = getattr(executor, "_mp_context", None)
    method = getattr(context, "get_start_method", None)
    if callable(method) and method() == "fork":
        raise ConfigError(
            "this process pool forks its workers, which would inherit dpskit's runtimes "
            "without their threads: create it with "
            "mp_context=multiprocessing.get_context('spawn') (or 'forkserver')"
        )


def worker_count(executor: Any) -> int | None:
    """How many workers ``executor`` has, where it tells: ``ProcessPoolExecutor`` and
    ``ThreadPoolExecutor``, Ray's ``ray.util.concurrent.futures.RayExecutor`` (its actors), a
    Dask client or its executor (the scheduler's worker processes). None otherwise."""
    client = getattr(executor, "client", executor)
    scheduler_info = getattr(client, "scheduler_info", None)
    if callable(scheduler_info):
        try:
            try:
                # Asked for every worker (a release may list only a few otherwise), and
                # n_workers, the total, read first where the answer has it.
                info = scheduler_info(n_workers=-1)
            except TypeError:  # releases before the argument list them all
                info = scheduler_info()
        except Exception:  # a client that lost its scheduler: the caller asks for shards=
            return None
        total = info.get("n_workers")
        if isinstance(total, int) and total > 0:
            return total
        return len(info.get("workers", {})) or None
    # The standard pools keep it in _max_workers; Ray's RayExecutor in max_workers.
    for attribute in ("_max_workers", "max_workers"):
        count = getattr(executor, attribute, None)
        if isinstance(count, int) and count > 0:
            return count
    return None


def collect(
    futures: Sequence[_Future],
    on_done: Callable[[int, ShardPart], None],
    while_waiting: Callable[[], None],
    *,
    stop: threading.Event | None = None,
) -> list[ShardPart]:
    """Waits for every shard, calling ``on_done(i, part)`` as each finishes (in any order) and
    ``while_waiting()`` about ten times a second meanwhile, and returns the parts in shard
    order. A shard that fails cancels those not started and raises the worker's own error (a
    note names the shard; a worker process that died gives the executor's error, e.g.
    ``BrokenProcessPool``); an interrupt, or ``stop`` set from another thread, cancels them
    too (raising ``concurrent.futures.CancelledError`` for ``stop``)."""
    parts: list[ShardPart | None] = [None] * len(futures)
    try:
        while any(p is None for p in parts):
            progressed = False
            for i, future in enumerate(futures):
                if parts[i] is None and future.done():
                    try:
                        part = future.result()
                    except BaseException as error:
                        # The worker's own type stays (a ConfigError is still one); the note
                        # says which shard (Python 3.11+ shows notes under the traceback).
                        if hasattr(error, "add_note"):
                            error.add_note(f"in shard {i}/{len(futures)} of the fleet")
                        raise
                    if not isinstance(part, ShardPart):
                        raise TypeError(
                            f"shard {i}/{len(futures)}: the executor returned "
                            f"{type(part).__name__}, not the shard's part"
                        )
                    parts[i] = part
                    on_done(i, part)
                    progressed = True
            if not progressed:
                if stop is not None and stop.is_set():
                    raise CancelledError("the fleet's run was cancelled")
                while_waiting()
                time.sleep(0.1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return [p for p in parts if p is not None]
