"""One fleet run by many workers through the executors teams already run: a
``ProcessPoolExecutor``, a Dask ``LocalCluster`` (its client and the client's executor) and a
thread pool, against one emulator, each giving the report the single-process run of the same
plan and seed gives, and saying where each shard ran."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import distributed
import pytest

import dpskit
from dpskit.fleet_executor import run_shard
from fleet_compare import assert_same_run, hashed_fleet_dps

pytest.importorskip("pandas")

DEVICES = 12
PLAN = dpskit.TelemetryPlan(interval=0.01, count=2, seed=11)


@dataclass
class Setup:
    cloud: dpskit.LocalCloud
    dps: dpskit.Dps
    authority: dpskit.CertificateAuthority
    certificates: Path
    whole: dpskit.FleetReport

    def fleet(self, **options: Any) -> dpskit.Fleet:
        settings: dict[str, Any] = {
            "authority": self.authority,
            "count": DEVICES,
            "prefix": "worker-",
            "telemetry": PLAN,
            "certificates_dir": self.certificates,
        }
        settings.update(options)
        return dpskit.Fleet(self.dps, **settings)


@pytest.fixture(scope="module")
def setup(dpskit_ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One cloud with two hubs behind one DPS, and the fleet run whole in this process."""
    base = tmp_path_factory.mktemp("executor")
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        dps = hashed_fleet_dps(cloud, dpskit_ca.intermediate, "exec")
        setup = Setup(cloud, dps, dpskit_ca.intermediate, base / "certs", None)  # type: ignore[arg-type]
        setup.whole = setup.fleet().run(progress=False)
        yield setup


def _spawned(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _ran_apart(report: dpskit.FleetReport, shards: int, *, other_processes: bool) -> None:
    """Each shard ran its slice, in a process of its own when the executor has processes."""
    runs = report.shard_runs
    assert [r.shard for r in runs] == [(i, shards) for i in range(shards)]
    assert sum(r.devices for r in runs) == DEVICES
    assert all(r.elapsed > 0 and r.started_s >= 0 for r in runs)
    pids = {r.pid for r in runs}
    if other_processes:
        assert os.getpid() not in pids
        assert all(r.peak_rss_bytes is not None and r.peak_rss_bytes > 10**6 for r in runs)
    else:
        assert pids == {os.getpid()}


def test_a_process_pool_runs_the_fleet_as_one_process_would(setup: Setup) -> None:
    with _spawned(3) as pool:
        report = setup.fleet().run(executor=pool, progress=False)
    assert_same_run(report, setup.whole, DEVICES)
    _ran_apart(report, 3, other_processes=True)
    # Per hub, the same devices and messages; the presets' refusals are counted once, by this
    # process (it runs the emulator), for the whole run.
    ours, theirs = report.azure_estimate().hubs, setup.whole.azure_estimate().hubs
    assert [(h.hub, h.devices, h.mean_message_bytes) for h in ours] == [
        (h.hub, h.devices, h.mean_message_bytes) for h in theirs
    ]
    assert all(h.throttled is not None and not any(h.throttled.values()) for h in ours)
    assert all(h.quota_refusals == 0 for h in ours)
    assert "Fleet of 12 devices" in report.summary()


def test_a_dask_local_cluster_runs_the_fleet_as_one_process_would(setup: Setup) -> None:
    # Dask's constructors are untyped.
    cluster_of = cast(Any, distributed.LocalCluster)
    client_of = cast(Any, distributed.Client)
    with (
        cluster_of(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        client_of(cluster) as client,
    ):
        # The client itself: its workers are counted, one shard each.
        report = setup.fleet().run(executor=client, progress=False)
        assert_same_run(report, setup.whole, DEVICES)
        _ran_apart(report, 2, other_processes=True)
        # Its concurrent.futures executor, with more shards than workers.
        seen: list[dpskit.FleetProgress] = []
        report = setup.fleet().run(
            executor=client.get_executor(), shards=4, progress=False, on_progress=seen.append
        )
        assert_same_run(report, setup.whole, DEVICES)
        _ran_apart(report, 4, other_processes=True)
    # Progress counts the shards as they finish: the last snapshot has every device.
    assert seen
    assert seen[-1].finished == seen[-1].total == DEVICES
    assert seen[-1].provisioned == DEVICES
    assert (seen[-1].shards_done, seen[-1].shards) == (4, 4)
    assert str(seen[-1]).startswith("shards 4/4  provisioned 12/12")


def test_a_thread_pool_and_a_symmetric_key_fleet(setup: Setup) -> None:
    group = setup.dps.create_enrollment_group(
        "keys", symmetric_key=True, allocation_policy="hashed"
    )
    whole = dpskit.Fleet(setup.dps, group_key=group, count=6, prefix="keyed-", telemetry=PLAN)
    single = whole.run(progress=False)
    with ThreadPoolExecutor(2) as pool:
        report = dpskit.Fleet(
            setup.dps, group_key=group, count=6, prefix="keyed-", telemetry=PLAN
        ).run(executor=pool, progress=False)
    assert_same_run(report, single, 6)
    assert [r.pid for r in report.shard_runs] == [os.getpid()] * 2


def test_workers_read_the_shared_folder_and_get_the_key_only_when_it_lacks_certificates(
    setup: Setup, tmp_path: Path
) -> None:
    # The module's whole run filled the shared folder: no task carries the CA's key.
    full = setup.fleet()._shard_tasks(3, _side(setup.fleet()))
    assert all(t.authority_key_pem is None for t in full)
    assert all(t.certificates_dir == str(setup.certificates.resolve()) for t in full)
    # A folder with one device's key gone: the key travels, and never shows in a repr.
    partial = tmp_path / "certs"
    partial.mkdir()
    for path in setup.certificates.iterdir():
        (partial / path.name).write_bytes(path.read_bytes())
    (partial / "worker-00005.key.pem").unlink()
    tasks = setup.fleet(certificates_dir=partial)._shard_tasks(3, _side(setup.fleet()))
    assert all(t.authority_key_pem and "PRIVATE KEY" in t.authority_key_pem for t in tasks)
    assert all("PRIVATE KEY" not in repr(t) for t in tasks)
    # A proxy's password stays out of the repr too; every run's tasks are its own.
    proxied = setup.fleet(proxy="http://fleet:hunter2@127.0.0.1:3128")
    again = proxied._shard_tasks(3, _side(proxied))
    assert all("hunter2" not in repr(t) for t in again)
    assert {t.run_id for t in again} != {t.run_id for t in tasks}
    assert len({t.run_id for t in again}) == 1
    # A local pool's workers share this machine's cores; other executors' workers keep theirs.
    assert all(t.worker_threads is None for t in full)
    with ThreadPoolExecutor(2) as pool:
        shared = setup.fleet()._shard_tasks(3, _side(setup.fleet()), pool)
        chosen = setup.fleet(worker_threads=3)._shard_tasks(3, _side(setup.fleet()), pool)
    assert {t.worker_threads for t in shared} == {max(1, (os.cpu_count() or 1) // 2)}
    assert {t.worker_threads for t in chosen} == {3}
    # The worker issues the missing certificate into the shared folder.
    part = run_shard(tasks[1])
    assert (partial / "worker-00005.key.pem").exists()
    assert part.columns["devices"]["outcome"] == ["completed"] * 4
    assert oct((partial / "worker-00005.key.pem").stat().st_mode & 0o777) == "0o600"


def test_a_fleet_of_issued_certificates_runs_without_the_cas_key(
    setup: Setup, tmp_path: Path
) -> None:
    # The machines that run the fleet hold the devices' certificates, never the CA's key.
    fleet = dpskit.Fleet(
        setup.dps,
        count=DEVICES,
        prefix="worker-",
        telemetry=PLAN,
        certificates_dir=setup.certificates,
    )
    assert fleet.x509
    with _spawned(2) as pool:
        assert_same_run(fleet.run(executor=pool, progress=False), setup.whole, DEVICES)
    partial = tmp_path / "certs"
    partial.mkdir()
    for path in setup.certificates.glob("worker-0000[0-5].*"):
        (partial / path.name).write_bytes(path.read_bytes())
    lacking = dpskit.Fleet(
        setup.dps, count=DEVICES, prefix="worker-", telemetry=PLAN, certificates_dir=partial
    )
    with pytest.raises(dpskit.ConfigError, match=r"6 of 12 devices .*first: worker-00006"):
        lacking.run(progress=False)
    with (
        _spawned(2) as pool,
        pytest.raises(dpskit.ConfigError, match=r"6 of 6 devices .*first: worker-00006"),
    ):
        lacking.run(executor=pool, progress=False)


def test_a_prefix_that_would_leave_the_certificate_folder_is_refused(setup: Setup) -> None:
    # The core's file-name rule judges the devices' names before any file is read or written.
    escaping = setup.fleet(prefix="../escape-")
    with pytest.raises(dpskit.CertificateError, match="cannot be used as a file name"):
        escaping.run(progress=False)
    assert not (setup.certificates.parent / "escape-00000.key.pem").exists()


def _side(fleet: dpskit.Fleet) -> Any:
    from dpskit.fleet import _CloudSide

    return _CloudSide(fleet, share=1)


def test_a_worker_that_fails_raises_its_own_error_naming_the_shard(
    setup: Setup, tmp_path: Path
) -> None:
    broken = tmp_path / "certs"
    broken.mkdir()
    for path in setup.certificates.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "worker-00009.fullchain.pem").write_text("not a certificate\n")
    with (
        _spawned(2) as pool,
        pytest.raises(dpskit.CertificateError) as raised,
    ):
        setup.fleet(certificates_dir=broken).run(executor=pool, shards=3, progress=False)
    assert "in shard 2/3 of the fleet" in getattr(raised.value, "__notes__", [""])


def test_bad_executor_runs_are_refused_before_any_work(setup: Setup) -> None:
    forking = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    with forking, pytest.raises(dpskit.ConfigError, match=r"forks its workers.*'spawn'"):
        setup.fleet().run(executor=forking, progress=False)

    class Submits:
        """An executor that tells nothing of its workers."""

        def submit(self, fn: Any, /, *args: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_result(fn(*args))
            return future

    with pytest.raises(dpskit.ConfigError, match="pass shards=N"):
        setup.fleet().run(executor=Submits(), progress=False)
    report = setup.fleet().run(executor=Submits(), shards=2, progress=False)
    assert_same_run(report, setup.whole, DEVICES)
    with pytest.raises(dpskit.ConfigError, match=r"shards must be 1\.\.12"):
        setup.fleet().run(executor=Submits(), shards=13, progress=False)
    with pytest.raises(dpskit.ConfigError, match=r"shard 1/3; an executor runs a whole fleet"):
        setup.fleet(shard="1/3").run(executor=Submits(), shards=2, progress=False)
    with pytest.raises(dpskit.ConfigError, match="pass executor= too"):
        setup.fleet().run(shards=2, progress=False)


def test_the_fleet_command_splits_over_local_worker_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dpskit.cli import main

    out = tmp_path / "fleet.csv"
    args = ["fleet", "--devices", "6", "--messages", "1", "--rate", "0", "--no-progress"]
    status = main([*args, "--workers", "2", "--dir", str(tmp_path / "work"), "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Fleet of 6 devices: " in captured.out
    loaded = dpskit.FleetReport.load(out)
    assert loaded.outcomes == {"completed": 6}
    assert loaded.to_pandas("devices")["registration_id"].tolist() == [
        f"sensor-0000{i}" for i in range(6)
    ]
    assert main([*args, "--workers", "2", "--shard", "0/2", "--dir", str(tmp_path / "w2")]) == 1
    assert "an executor runs a whole fleet" in capsys.readouterr().err


def test_run_async_over_an_executor_and_its_cancellation(setup: Setup) -> None:
    async def whole() -> dpskit.FleetReport:
        with ThreadPoolExecutor(2) as pool:
            return await setup.fleet().run_async(executor=pool, progress=False)

    assert_same_run(asyncio.run(whole()), setup.whole, DEVICES)

    # One worker, four shards of a longer plan: cancelled while the first shard runs, the
    # three not started never run (none of their devices registers).
    slow = dpskit.TelemetryPlan(interval=0.05, count=20, seed=11)

    async def cancelled() -> None:
        with ThreadPoolExecutor(1) as pool:
            # Paced like Azure at 60 a minute, which the cancellation must lift.
            fleet = setup.fleet(
                prefix="cancelled-",
                telemetry=slow,
                certificates_dir=None,
                pace_like_azure=True,
                time_compression=0.06,
            )
            running = asyncio.ensure_future(
                fleet.run_async(executor=pool, shards=4, progress=False)
            )
            await asyncio.sleep(0.3)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(cancelled())
    registered = {r.registration_id for r in setup.dps.registrations("fleet")}
    first = {f"cancelled-{i:05d}" for i in range(3)}
    assert first <= registered
    assert not {f"cancelled-{i:05d}" for i in range(3, DEVICES)} & registered
    # The pacing went with the cancelled run: a burst registers unrefused.
    after = setup.fleet(prefix="after-cancel-", certificates_dir=None, telemetry=None)
    assert after.run(progress=False).retries["provisioning"] == 0
