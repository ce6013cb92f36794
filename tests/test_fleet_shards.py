"""Fleets split into shards a scheduler starts: the shard read from Kubernetes', Slurm's and
Azure Batch's variables, and shards saved by separate runs merged back into the report one
process would have given, refusing foreign, missing and duplicated shards."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dpskit
from dpskit.cli import main
from dpskit.fleet import shard_from_environment
from fleet_compare import assert_same_run, hashed_fleet_dps

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

# -- the shard from the scheduler's environment --------------------------------------------------


def test_a_kubernetes_indexed_job_gives_its_completion_index_of_the_manifests_count() -> None:
    env = {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "5", "HOSTNAME": "fleet-2-x"}
    assert shard_from_environment(env) == (2, 5)
    with pytest.raises(dpskit.ConfigError, match=r"JOB_COMPLETIONS is not.*spec\.completions"):
        shard_from_environment({"JOB_COMPLETION_INDEX": "2"})


def test_a_slurm_array_counts_from_its_first_task_in_steps() -> None:
    env = {
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_MIN": "5",
        "SLURM_ARRAY_TASK_MAX": "8",
        "SLURM_ARRAY_TASK_COUNT": "4",
    }
    assert shard_from_environment(env) == (2, 4)
    stepped = {
        "SLURM_ARRAY_TASK_ID": "20",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "30",
        "SLURM_ARRAY_TASK_STEP": "10",
        "SLURM_ARRAY_TASK_COUNT": "4",
    }
    assert shard_from_environment(stepped) == (2, 4)
    # --array=1,3,7: no index follows from the task id.
    gaps = {
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "7",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    with pytest.raises(dpskit.ConfigError, match="not an evenly stepped range"):
        shard_from_environment(gaps)


def test_azure_batch_tasks_carry_dpskits_index_and_count() -> None:
    env = {"AZ_BATCH_TASK_ID": "fleet-3", "DPSKIT_SHARD_INDEX": "3", "DPSKIT_SHARD_COUNT": "8"}
    assert shard_from_environment(env) == (3, 8)
    with pytest.raises(dpskit.ConfigError, match=r"Azure Batch: AZ_BATCH_TASK_ID .*INDEX is not"):
        shard_from_environment({"AZ_BATCH_TASK_ID": "fleet-3"})


def test_no_scheduler_and_inconsistent_values_are_refused_naming_the_variables() -> None:
    with pytest.raises(dpskit.ConfigError, match=r"JOB_COMPLETION_INDEX.*SLURM_ARRAY_TASK_ID"):
        shard_from_environment({"HOME": "/root"})
    with pytest.raises(dpskit.ConfigError, match=r"shard 5 of 5 \(JOB_COMPLETION_INDEX"):
        shard_from_environment({"JOB_COMPLETION_INDEX": "5", "JOB_COMPLETIONS": "5"})
    with pytest.raises(dpskit.ConfigError, match="JOB_COMPLETIONS='three'"):
        shard_from_environment({"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "three"})
    both = {
        "JOB_COMPLETION_INDEX": "1",
        "JOB_COMPLETIONS": "3",
        "DPSKIT_SHARD_INDEX": "2",
        "DPSKIT_SHARD_COUNT": "3",
    }
    with pytest.raises(dpskit.ConfigError, match=r"disagree: Kubernetes: 1/3.*dpskit: 2/3"):
        shard_from_environment(both)


# -- shards run, saved and merged ----------------------------------------------------------------


@dataclass
class Runs:
    whole: dpskit.FleetReport
    whole_file: Path
    shards: list[Path]  # the device frames of shards 0, 1, 2 of the same run
    foreign: Path  # shard 1/3 of a run with another seed
    larger: Path  # shard 1/3 of a run of 13 devices
    auto_shard: tuple[int, int] | None


PLAN = dpskit.TelemetryPlan(interval=0.01, count=2, seed=7)


@pytest.fixture(scope="module")
def runs(dpskit_ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """One cloud, one fleet of 12 run whole and as three shards (each saved in its own
    folder, as separate machines would), and one shard of another run."""
    base = tmp_path_factory.mktemp("shards")
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        dps = hashed_fleet_dps(cloud, dpskit_ca.intermediate, "shard")

        def fleet(shard: str | None, seed: int = 7, count: int = 12) -> dpskit.Fleet:
            return dpskit.Fleet(
                dps,
                authority=dpskit_ca.intermediate,
                count=count,
                prefix="merge-",
                telemetry=PLAN,
                seed=seed,
                shard=shard,
                certificates_dir=base / "certs",
            )

        whole = fleet(None).run(progress=False)
        whole_file = base / "whole" / "results.parquet"
        whole_file.parent.mkdir()
        whole.save(whole_file)
        shards = []
        for i in range(3):
            # Shard 1 as CSV: a merge reads both formats.
            suffix = ".csv" if i == 1 else ".parquet"
            out = base / f"machine-{i}" / f"shard-{i}{suffix}"
            out.parent.mkdir()
            fleet(f"{i}/3").run(progress=False).save(out)
            shards.append(out)
        foreign = base / "other" / "shard-1.parquet"
        foreign.parent.mkdir()
        fleet("1/3", seed=8).run(progress=False).save(foreign)
        larger = base / "larger" / "shard-1.parquet"
        larger.parent.mkdir()
        fleet("1/3", count=13).run(progress=False).save(larger)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("JOB_COMPLETION_INDEX", "1")
            env.setenv("JOB_COMPLETIONS", "3")
            auto_shard = fleet("auto").shard
    return Runs(whole, whole_file, shards, foreign, larger, auto_shard)


def _gather(folder: Path, *devices: Path, rename: str | None = None) -> Path:
    """Copies results (device frame, message frame, record) into ``folder``, as a shared
    location the shards wrote to."""
    folder.mkdir(exist_ok=True)
    for path in devices:
        stem = rename or path.stem
        for part, name in (
            (path, f"{stem}{path.suffix}"),
            (path.with_name(f"{path.stem}.messages{path.suffix}"), f"{stem}.messages{path.suffix}"),
            (path.with_name(f"{path.stem}.run.json"), f"{stem}.run.json"),
        ):
            shutil.copy(part, folder / name)
    return folder


def _same_run(merged: dpskit.FleetReport, whole: dpskit.FleetReport) -> None:
    assert_same_run(merged, whole, devices=12)
    assert merged.messages_sent == 24


def test_a_scheduler_started_fleet_takes_its_shard_from_the_environment(runs: Runs) -> None:
    assert runs.auto_shard == (1, 3)


def test_three_shards_saved_apart_load_as_the_single_process_run(
    runs: Runs, tmp_path: Path
) -> None:
    shared = _gather(tmp_path / "shared", *runs.shards)
    merged = dpskit.FleetReport.load(shared)
    _same_run(merged, runs.whole)
    # Times count from the earliest shard's start, so the run spans every shard.
    assert merged.elapsed >= max(
        json.loads(p.with_name(f"{p.stem}.run.json").read_text())["elapsed"] for p in runs.shards
    )
    assert all(s >= 0 for s in merged.to_pandas("devices")["started_s"])
    # Files named one by one (each device frame, or its record) give the same report.
    by_file = dpskit.FleetReport.load(
        runs.shards[0], runs.shards[1].with_name("shard-1.run.json"), runs.shards[2]
    )
    _same_run(by_file, runs.whole)


def test_one_unsharded_result_loads_as_itself(runs: Runs) -> None:
    loaded = dpskit.FleetReport.load(runs.whole_file)
    _same_run(loaded, runs.whole)
    assert loaded.elapsed == pytest.approx(runs.whole.elapsed)
    assert loaded.connect_phase == pytest.approx(runs.whole.connect_phase)
    assert loaded.peak_waiting == runs.whole.peak_waiting
    assert loaded.azure_estimate().hubs == runs.whole.azure_estimate().hubs


def test_a_shard_of_another_run_is_refused_naming_it(runs: Runs, tmp_path: Path) -> None:
    shared = _gather(tmp_path / "shared", runs.shards[0], runs.shards[2], runs.foreign)
    with pytest.raises(dpskit.ConfigError, match=r"different runs.*shard-1\.parquet.*seed=8"):
        dpskit.FleetReport.load(shared)
    with pytest.raises(dpskit.ConfigError, match=r"different runs.*larger.*devices=13"):
        dpskit.FleetReport.load(runs.shards[0], runs.larger, runs.shards[2])


def test_a_missing_shard_is_refused(runs: Runs, tmp_path: Path) -> None:
    shared = _gather(tmp_path / "shared", runs.shards[0], runs.shards[2])
    with pytest.raises(dpskit.ConfigError, match=r"missing shards 1/3 \(found 0/3 .*shard-0"):
        dpskit.FleetReport.load(shared)


def test_a_shard_given_twice_is_refused(runs: Runs, tmp_path: Path) -> None:
    shared = _gather(tmp_path / "shared", *runs.shards)
    _gather(shared, runs.shards[1], rename="shard-1-again")
    with pytest.raises(dpskit.ConfigError, match=r"duplicate shards: shard 1/3: .*shard-1-again"):
        dpskit.FleetReport.load(shared)
    # The same file named twice (its folder and itself) is one result, not a duplicate.
    _same_run(dpskit.FleetReport.load(*runs.shards, runs.shards[0]), runs.whole)


def test_shards_disagreeing_on_the_count_and_unreadable_results_are_refused(
    runs: Runs, tmp_path: Path
) -> None:
    shared = _gather(tmp_path / "shared", *runs.shards)
    record = shared / "shard-2.run.json"
    data = json.loads(record.read_text())
    data["shard"] = [2, 4]
    record.write_text(json.dumps(data))
    with pytest.raises(dpskit.ConfigError, match=r"shard count: n=3: .*; n=4: .*shard-2"):
        dpskit.FleetReport.load(shared)
    record.write_text("{not json")
    with pytest.raises(dpskit.ConfigError, match=r"shard-2\.run\.json: not a readable"):
        dpskit.FleetReport.load(shared)
    record.unlink()
    with pytest.raises(dpskit.ConfigError, match=r"shard-2\.parquet: no shard-2\.run\.json"):
        dpskit.FleetReport.load(shared)
    _gather(shared, runs.shards[2])
    (shared / "shard-2.parquet").write_bytes(b"not parquet")
    with pytest.raises(dpskit.ConfigError, match=r"shard-2\.parquet: not a readable fleet frame"):
        dpskit.FleetReport.load(shared)
    with pytest.raises(dpskit.ConfigError, match="no such file or folder"):
        dpskit.FleetReport.load(tmp_path / "nowhere")
    with pytest.raises(dpskit.ConfigError, match="no fleet results"):
        dpskit.FleetReport.load(tmp_path)


def test_the_merge_command_prints_and_writes_one_report_and_refuses_bad_sets(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = _gather(tmp_path / "shared", *runs.shards)
    out = tmp_path / "merged" / "fleet.parquet"
    out.parent.mkdir()
    assert main(["fleet", "merge", str(shared), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Fleet of 12 devices: " in printed
    assert "wrote" in printed
    _same_run(dpskit.FleetReport.load(out), runs.whole)

    assert main(["fleet", "merge", *map(str, runs.shards), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["devices"] == 12
    assert summary["outcomes"] == {"completed": 12}
    assert summary["messages_acknowledged"] == runs.whole.messages_acknowledged

    assert main(["fleet", "merge", str(runs.shards[0]), str(runs.foreign)]) == 1
    assert "different runs" in capsys.readouterr().err
    assert main(["fleet", "merge", str(runs.shards[0]), str(runs.shards[2])]) == 1
    assert "missing shards 1/3" in capsys.readouterr().err


def test_the_fleet_command_runs_the_shard_its_scheduler_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    out = tmp_path / "shard.csv"
    args = ["fleet", "--devices", "6", "--messages", "1", "--rate", "0", "--no-progress"]
    status = main([*args, "--shard", "auto", "--dir", str(tmp_path / "work"), "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "2 of 6 devices, shard 2/3" in captured.err
    assert list(pd.read_csv(out)["registration_id"]) == ["sensor-00004", "sensor-00005"]
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN")
    assert main([*args, "--shard", "auto", "--dir", str(tmp_path / "work")]) == 1
    assert "SLURM_ARRAY_TASK_MIN is not" in capsys.readouterr().err


# -- pacing like Azure across shards -------------------------------------------------------------


def test_a_scheduler_shard_paced_like_azure_takes_its_share_of_the_dps_rate(
    dpskit_ca: Any,
) -> None:
    """Azure's registration rate is one DPS's, shared by every shard: a shard that paces its
    own emulator takes 1/n of it. At 240 a minute a DPS admits 4 registrations at once; a
    quarter of that admits one, so the second of a shard's two devices is told to retry."""
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("paced-hub")

        def paced(name: str, count: int, shard: str | None) -> dpskit.FleetReport:
            # A DPS of its own: each run starts with a full registration bucket.
            dps = cloud.create_dps(name)
            cloud.link_hub(dps, hub)
            dps.prove_possession("issuing", dpskit_ca.intermediate)
            dps.create_enrollment_group("fleet", ca_reference="issuing", hubs=[hub])
            return dpskit.Fleet(
                dps,
                authority=dpskit_ca.intermediate,
                count=count,
                prefix=f"{name}-",
                shard=shard,
                pace_like_azure=True,
                time_compression=0.24,  # Azure's 1,000 a minute becomes 240
            ).run(progress=False)

        # Four devices of an unsharded fleet register at once, unrefused.
        whole_rate = paced("whole", 4, None)
        assert whole_rate.outcomes == {"completed": 4}
        assert whole_rate.retries["provisioning"] == 0
        # Two devices of a quarter shard: the DPS's rate is a quarter, one is refused first.
        quarter = paced("quarter", 8, "0/4")
        assert quarter.outcomes == {"completed": 2}
        assert quarter.retries["provisioning"] >= 1
        # The pacing is lifted when the shard ends: a burst registers unrefused.
        dps = cloud.dps("quarter")
        lifted = dpskit.Fleet(dps, authority=dpskit_ca.intermediate, count=8, prefix="after-")
        assert lifted.run(progress=False).retries["provisioning"] == 0
