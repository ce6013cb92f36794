"""Fleets against the real emulator: hundreds of distinct X.509 identities through DPS, two
hubs, telemetry plans, faults (throttled registrations, dropped and throttled connections),
and the report checked against what the hubs stored."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import dpskit
from conftest import AzureAtLocalCloud
from dpskit import signals
from dpskit.cli import main

pd = pytest.importorskip("pandas")


class Setup:
    """A local cloud with two hubs linked to one DPS, a verified intermediate and an X.509
    group hashing over both hubs."""

    def __init__(self, cloud: dpskit.LocalCloud, ca: Any) -> None:
        self.cloud = cloud
        self.hubs = [cloud.create_hub("fleet-hub-a"), cloud.create_hub("fleet-hub-b")]
        self.dps = cloud.create_dps("fleet-dps")
        for hub in self.hubs:
            cloud.link_hub(self.dps, hub)
        self.authority = ca.intermediate
        self.dps.prove_possession("issuing", ca.intermediate)
        self.dps.create_enrollment_group(
            "fleet", ca_reference="issuing", allocation_policy="hashed", hubs=self.hubs
        )

    def stored(self) -> list[dpskit.TelemetryMessage]:
        return [m for hub in self.hubs for m in hub.telemetry()]


@pytest.fixture
def setup(dpskit_ca: Any) -> Iterator[Setup]:
    with dpskit.LocalCloud(port=0, poll_retry_after=0) as cloud:
        yield Setup(cloud, dpskit_ca)


def test_a_few_hundred_devices_provision_spread_over_two_hubs_and_all_acked_telemetry_is_stored(
    setup: Setup,
) -> None:
    plan = dpskit.TelemetryPlan(
        interval=0.05,
        count=4,
        seed=11,
        fields={
            "temperature": (
                signals.sine(21.0, 3.0, period=3600) + signals.gaussian(0, 0.2)
            ).rounded(2),
            "status": signals.choice(["ok", "warn"], weights=[9, 1]),
        },
    )
    snapshots: list[dpskit.FleetProgress] = []
    fleet = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=300, prefix="unit-", telemetry=plan
    )
    report = fleet.run(progress=False, on_progress=snapshots.append)

    assert report.device_count == 300
    assert report.outcomes == {"completed": 300}, report.summary()
    assert report.provisioned == 300
    per_hub = report.devices_per_hub
    assert set(per_hub) == {"fleet-hub-a", "fleet-hub-b"}
    assert min(per_hub.values()) > 60, per_hub  # hashed: both hubs get a fair share
    assert report.messages_sent == report.messages_acknowledged == 1200

    stored = setup.stored()
    assert len(stored) == 1200
    # The report's per-hub view is the hubs' own: each hub holds exactly its devices' messages.
    frame = report.to_pandas("devices")
    for hub in setup.hubs:
        mine = set(frame.loc[frame["assigned_hub"] == hub.host_name, "device_id"])
        assert {m.device_id for m in hub.telemetry()} == mine
        assert {d.device_id for d in hub.devices()} == mine
    bodies = {m.message_id: m.json() for m in stored}
    messages = report.to_pandas("messages")
    assert messages["acknowledged"].all()
    assert set(messages["message_id"]) == set(bodies)
    body = bodies["unit-00007-2"]
    assert body["deviceId"] == "unit-00007"
    assert body["seq"] == 2
    assert body["status"] in {"ok", "warn"}
    assert 17.0 < body["temperature"] < 25.0
    assert stored[0].content_type == "application/json"

    # Progress moved forward and ended at the totals.
    assert snapshots[-1].finished == 300
    assert snapshots[-1].acknowledged == 1200
    assert [s.acknowledged for s in snapshots] == sorted(s.acknowledged for s in snapshots)
    assert report.provisioning_latency_ms["p50"] > 0
    assert report.ack_latency_ms["p99"] >= report.ack_latency_ms["p50"] > 0
    assert sum(row[2] for row in report.throughput()) == 1200
    summary = report.summary()
    assert "completed" in summary
    assert "300" in summary
    assert "fleet-hub-a" in summary


def test_the_fleet_frame_joins_the_hubs_telemetry_on_message_id(setup: Setup) -> None:
    plan = dpskit.TelemetryPlan(interval=0.02, count=3, fields={"v": signals.counter()})
    report = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=12, prefix="join-", telemetry=plan
    ).run(progress=False)
    sent = report.to_pandas("messages")
    received = pd.concat([hub.telemetry().to_pandas() for hub in setup.hubs])
    joined = sent.merge(received, on="message_id", suffixes=("", "_hub"))
    assert len(joined) == len(sent) == 36
    assert (joined["device_id"] == joined["device_id_hub"]).all()
    assert [b["v"] for b in joined.sort_values(["device_id", "seq"])["body"]][:3] == [0, 1, 2]
    devices = report.to_pandas("devices")
    assert set(devices["hub"]) <= {"fleet-hub-a", "fleet-hub-b"}
    assert list(report.to_pandas("throughput").columns) == ["second", "sent", "acknowledged"]


def test_on_azure_the_fleet_frame_joins_what_the_events_endpoint_delivered(setup: Setup) -> None:
    """The same join through AzureCloud: the hubs' telemetry read over AMQP from the built-in
    Event Hub-compatible endpoint, as a fleet run against Azure is checked."""
    plan = dpskit.TelemetryPlan(interval=0.02, count=3, fields={"v": signals.counter()})
    report = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=8, prefix="azjoin-", telemetry=plan
    ).run(progress=False)
    azure = AzureAtLocalCloud(setup.cloud)
    received = pd.concat([azure.hub(hub.name).telemetry().to_pandas() for hub in setup.hubs])
    sent = report.to_pandas("messages")
    joined = sent.merge(received, on="message_id", suffixes=("", "_hub"))
    assert len(joined) == len(sent) == 24
    assert (joined["device_id"] == joined["device_id_hub"]).all()
    by_device = joined.sort_values(["device_id", "seq"]).groupby("device_id")["body"]
    assert all([b["v"] for b in bodies] == [0, 1, 2] for _, bodies in by_device)


def test_faults_are_retried_and_counted_and_nothing_acknowledged_is_lost(setup: Setup) -> None:
    hub_a, hub_b = setup.hubs
    setup.dps.refuse_registrations(25, status=429)
    dropped: list[str] = []
    dropping = threading.Event()

    def inject(snapshot: dpskit.FleetProgress) -> None:
        # Mid-stream: drop some live connections and throttle one hub hard for a moment.
        if snapshot.acknowledged > 200 and not dropping.is_set():
            dropping.set()
            for n in range(0, 40, 2):
                device_id = f"fault-{n:05d}"
                if hub_a.drop_connection(device_id) or hub_b.drop_connection(device_id):
                    dropped.append(device_id)
            hub_a.set_throttle(messages_per_second=50)
            threading.Timer(1.5, lambda: hub_a.set_throttle(messages_per_second=0)).start()

    plan = dpskit.TelemetryPlan(interval=0.1, count=30, fields={"x": signals.uniform(0, 1)})
    report = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=60, prefix="fault-", telemetry=plan
    ).run(progress=False, on_progress=inject)

    assert dropping.is_set(), "the faults were never injected"
    assert dropped, "no live connection was dropped"
    assert report.outcomes == {"completed": 60}, report.summary()
    retries = report.retries
    assert retries["provisioning"] >= 25
    assert retries["reconnects"] >= len(dropped)
    frame = report.to_pandas("devices")
    by_id = dict(zip(frame["registration_id"], frame["reconnects"], strict=True))
    assert all(by_id[d] >= 1 for d in dropped)
    # Every acknowledged message is stored (a message resent after a drop may be stored twice,
    # as at-least-once delivery allows; none is missing).
    acknowledged = report.to_pandas("messages")
    acknowledged = acknowledged[acknowledged["acknowledged"]]
    stored_ids = {m.message_id for m in setup.stored()}
    assert len(acknowledged) == report.messages_acknowledged == 1800
    assert set(acknowledged["message_id"]) <= stored_ids
    assert "provisioning retries" in report.summary()


def test_a_symmetric_key_fleet_uses_keys_derived_from_the_group(setup: Setup) -> None:
    group = setup.dps.create_enrollment_group(
        "keys", symmetric_key=True, allocation_policy="hashed", hubs=setup.hubs
    )
    plan = dpskit.TelemetryPlan(interval=0.01, count=2)
    report = dpskit.Fleet(setup.dps, group_key=group, count=20, prefix="sym-", telemetry=plan).run(
        progress=False
    )
    assert report.outcomes == {"completed": 20}
    assert report.messages_acknowledged == 40
    identities = [d for hub in setup.hubs for d in hub.devices()]
    assert sorted(d.device_id for d in identities) == [f"sym-{n:05d}" for n in range(20)]
    # A wrong group key is refused by DPS, and each device says so.
    wrong = dpskit.Fleet(setup.dps, group_key="A" * 44, count=3, prefix="bad-").run(progress=False)
    assert wrong.outcomes == {"provisioning_failed": 3}
    assert all("401" in str(e) for e in wrong.to_pandas("devices")["error"])


def test_the_same_seed_gives_the_same_telemetry_and_custom_generators_run_once_per_device(
    setup: Setup,
) -> None:
    calls: Counter[str] = Counter()

    def battery(device_id: str, count: int, rng: random.Random) -> list[float]:
        calls[device_id] += 1
        level = rng.uniform(80, 100)
        return [round(level - 0.5 * k, 2) for k in range(count)]

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    plan = dpskit.TelemetryPlan(
        interval=0.01,
        count=5,
        seed=3,
        start=start,
        time_scale=60.0,
        fields={
            "t": signals.random_walk(20.0, 0.5, low=0, high=40),
            "battery": battery,
        },
    )
    for _ in range(2):
        dpskit.Fleet(
            setup.dps, authority=setup.authority, count=4, prefix="seed-", telemetry=plan
        ).run(progress=False)
    assert calls == {f"seed-{n:05d}": 2 for n in range(4)}
    by_id: dict[str, list[dict[str, Any]]] = {}
    for message in setup.stored():
        assert message.message_id is not None
        by_id.setdefault(message.message_id, []).append(message.json())
    assert len(by_id) == 20
    assert all(len(b) == 2 and b[0] == b[1] for b in by_id.values())
    first = by_id["seed-00001-0"][0]
    assert first["ts"] == "2026-01-01T00:00:00.000Z"
    assert by_id["seed-00001-1"][0]["ts"] == "2026-01-01T00:00:00.600Z"  # 0.01 s x 60
    assert by_id["seed-00001-1"][0]["battery"] == round(first["battery"] - 0.5, 2)
    # Another seed, other values.
    reseeded = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=1, prefix="seed-", telemetry=plan, seed=4
    )
    assert reseeded.telemetry is not None
    assert reseeded.telemetry.seed == 4


def test_dropouts_and_duplicates_show_in_the_hub_as_gaps_and_repeats(setup: Setup) -> None:
    plan = dpskit.TelemetryPlan(
        interval=0.0, count=200, seed=5, dropout_rate=0.1, duplicate_rate=0.1
    )
    report = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=5, prefix="dd-", telemetry=plan
    ).run(progress=False)
    frame = report.to_pandas("devices")
    dropped, duplicated = int(frame["dropouts"].sum()), int(frame["duplicates"].sum())
    assert 50 < dropped < 150
    assert 50 < duplicated < 150
    stored = Counter(m.message_id for m in setup.stored())
    assert sum(stored.values()) == 1000 - dropped + duplicated == report.messages_acknowledged
    assert sum(1 for n in stored.values() if n == 2) == duplicated
    assert len(stored) == 1000 - dropped


def test_shards_split_the_ids_so_machines_run_one_fleet(setup: Setup) -> None:
    shards = [
        dpskit.Fleet(setup.dps, authority=setup.authority, count=10, shard=f"{i}/3")
        for i in range(3)
    ]
    ids = [fleet.registration_ids for fleet in shards]
    assert ids[1] == ["sensor-00003", "sensor-00004", "sensor-00005"]
    assert sorted(i for part in ids for i in part) == [f"sensor-{n:05d}" for n in range(10)]
    report = shards[2].run(progress=False)
    assert report.outcomes == {"completed": 4}
    assert report.shard == (2, 3)
    assert "shard 2/3" in report.summary()


def test_certificates_are_issued_once_and_reused_from_the_folder(
    setup: Setup, tmp_path: Path
) -> None:
    folder = tmp_path / "devices"
    fleet = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=3, prefix="kept-", certificates_dir=folder
    )
    first = fleet.certificates()
    assert (folder / "kept-00001.key.pem").stat().st_mode & 0o777 == 0o600
    again = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=4, prefix="kept-", certificates_dir=folder
    ).certificates()
    assert [c.certificate.thumbprint_sha256 for c in again[:3]] == [
        c.certificate.thumbprint_sha256 for c in first
    ]
    assert again[3].registration_id == "kept-00003"


def test_pacing_like_azure_applies_the_registration_quota(setup: Setup) -> None:
    # 1,000/min compressed 0.3x is 300/min.
    report = dpskit.Fleet(
        setup.dps,
        authority=setup.authority,
        count=6,
        prefix="paced-",
        pace_like_azure=True,
        time_compression=0.3,
    ).run(progress=False)
    assert report.outcomes == {"completed": 6}
    assert "Paced like Azure" in report.summary()
    assert report.azure_minimum_seconds == pytest.approx(0.36)
    # 300 a minute holds 5 at once: six arriving together meet a 429, and wait it out.
    assert report.retries["provisioning"] >= 1
    # The quota is lifted afterwards.
    after = dpskit.Fleet(setup.dps, authority=setup.authority, count=8, prefix="free-").run()
    assert after.retries["provisioning"] == 0


def test_a_default_local_cloud_fleet_is_not_capped_at_its_concurrency_per_second(
    dpskit_ca: Any,
) -> None:
    # A default LocalCloud (port 0 only because 8883 may be taken) and a default Fleet. Before,
    # DPS advised retry-after 1 and each device held one of the 64 slots while it slept: every
    # registration took at least a second and the fleet at least 1000 / 64 = 15.6 s.
    with dpskit.LocalCloud(port=0) as cloud:
        setup = Setup(cloud, dpskit_ca)
        fleet = dpskit.Fleet(setup.dps, authority=setup.authority, count=1000, prefix="dflt-")
        fleet.certificates()
        report = fleet.run(progress=False)
    assert report.outcomes == {"completed": 1000}, report.summary()
    assert report.provisioning_latency_ms["p50"] < 1000, report.summary()
    assert report.connect_phase < 1000 / 64, report.summary()


def test_devices_waiting_for_their_poll_give_their_slot_back(dpskit_ca: Any) -> None:
    # DPS advises retry-after 1 and the fleet has 4 slots. Devices honour the wait (each
    # registration takes a second or more) but do not sleep in a slot: many wait at once, and
    # the fleet takes far less than the 120 / 4 = 30 s that holding slots while asleep costs.
    with dpskit.LocalCloud(port=0, poll_retry_after=1) as cloud:
        setup = Setup(cloud, dpskit_ca)
        fleet = dpskit.Fleet(
            setup.dps, authority=setup.authority, count=120, prefix="wait-", concurrency=4
        )
        fleet.certificates()
        report = fleet.run(progress=False)
    assert report.outcomes == {"completed": 120}, report.summary()
    assert report.provisioning_latency_ms["p50"] >= 1000
    assert report.peak_waiting > 4 * 4, report.peak_waiting
    assert report.connect_phase < 120 / 4 / 2, report.summary()


def test_a_failing_progress_callback_cancels_the_run_and_raises(setup: Setup) -> None:
    # A message every 30 s: only a cancel that wakes the waiting devices ends this quickly.
    plan = dpskit.TelemetryPlan(interval=30, count=10)

    def stop(snapshot: dpskit.FleetProgress) -> None:
        if snapshot.connected >= 5:
            raise KeyboardInterrupt

    fleet = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=5, prefix="stop-", telemetry=plan
    )
    with pytest.raises(KeyboardInterrupt):
        fleet.run(progress=False, on_progress=stop)
    # The devices disconnected cleanly: none is left connected.
    for _ in range(50):
        if not any(d.connection_state == "Connected" for h in setup.hubs for d in h.devices()):
            break
        threading.Event().wait(0.1)
    assert not any(d.connection_state == "Connected" for h in setup.hubs for d in h.devices())


def test_bad_plans_and_fleets_are_refused_with_config_errors(setup: Setup) -> None:
    with pytest.raises(dpskit.ConfigError, match="duration or a count"):
        dpskit.TelemetryPlan(interval=1.0)
    with pytest.raises(dpskit.ConfigError, match="dropout_rate"):
        dpskit.TelemetryPlan(count=1, dropout_rate=1.5)
    with pytest.raises(dpskit.ConfigError, match="reserved"):
        dpskit.TelemetryPlan(count=1, fields={"seq": signals.counter()})
    with pytest.raises(dpskit.ConfigError, match="give a count"):
        dpskit.TelemetryPlan(interval=0, duration=5)
    with pytest.raises(dpskit.ConfigError, match="low"):
        signals.uniform(5, 1)
    with pytest.raises(dpskit.ConfigError, match=r"an authority .*certificates_dir.*group_key"):
        dpskit.Fleet(setup.dps, count=3)
    with pytest.raises(dpskit.ConfigError, match="either an authority"):
        dpskit.Fleet(setup.dps, count=3, authority=setup.authority, group_key="a2V5")
    with pytest.raises(dpskit.ConfigError, match="shard"):
        dpskit.Fleet(setup.dps, authority=setup.authority, count=3, shard="3/3")
    with pytest.raises(dpskit.ConfigError, match="period"):
        signals.sine(0, 1, period=0)
    with pytest.raises(dpskit.ConfigError, match="kind"):
        dpskit.Fleet(setup.dps, authority=setup.authority, count=1).run(progress=False).to_pandas(
            "nope"
        )


def test_results_are_saved_as_csv_and_parquet(setup: Setup, tmp_path: Path) -> None:
    plan = dpskit.TelemetryPlan(interval=0.01, count=2)
    report = dpskit.Fleet(
        setup.dps, authority=setup.authority, count=3, prefix="save-", telemetry=plan
    ).run(progress=False)
    devices_csv, messages_csv, record = report.save(tmp_path / "run.csv")
    assert messages_csv.name == "run.messages.csv"
    assert json.loads(record.read_text())["run"]["prefix"] == "save-"
    assert len(pd.read_csv(devices_csv)) == 3
    assert len(pd.read_csv(messages_csv)) == 6
    pytest.importorskip("pyarrow")
    devices_parquet, _, _ = report.save(tmp_path / "run.parquet")
    assert list(pd.read_parquet(devices_parquet)["registration_id"]) == [
        "save-00000",
        "save-00001",
        "save-00002",
    ]
    with pytest.raises(dpskit.ConfigError, match=r"csv or \.parquet"):
        report.save(tmp_path / "run.xlsx")


def test_the_fleet_command_sets_up_the_cloud_runs_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.csv"
    args = ["fleet", "--devices", "12", "--rate", "10", "--duration", "0.5", "--no-progress"]
    status = main([*args, "--dir", str(tmp_path / "work"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "Fleet of 12 devices" in printed
    assert "fleet-hub-1" in printed
    frame = pd.read_csv(out)
    assert (frame["outcome"] == "completed").all()
    assert frame["sent"].sum() == 60
    body = json.loads(pd.read_csv(tmp_path / "results.messages.csv").iloc[0].to_json())
    assert body["acknowledged"] is True
    # A rerun reuses the CA and the device certificates.
    intermediate = (tmp_path / "work/certs/intermediate.cert.pem").read_text()
    assert main([*args, "--dir", str(tmp_path / "work")]) == 0
    assert (tmp_path / "work/certs/intermediate.cert.pem").read_text() == intermediate


def test_the_progress_line_is_rewritten_in_place_on_a_terminal(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = dpskit.TelemetryPlan(interval=0.1, count=4)
    dpskit.Fleet(setup.dps, authority=setup.authority, count=4, prefix="bar-", telemetry=plan).run(
        progress=True
    )
    err = capsys.readouterr().err
    lines = err.split("\r")
    assert len(lines) > 2  # several updates, each over the last
    final = lines[-1]
    assert final.endswith("\n")
    assert "provisioned 4/4" in final
    assert "messages 16/16 acked" in final
    # Off by default when nothing is attached (a pipe, CI).
    dpskit.Fleet(setup.dps, authority=setup.authority, count=1, prefix="quiet-").run()
    assert capsys.readouterr().err == ""


def test_cancelling_wakes_devices_waiting_out_a_throttle(setup: Setup) -> None:
    # One registration a minute: after the first, every device is told to retry in 60 s.
    setup.dps.set_registration_quota(1)
    outcomes: list[dpskit.FleetReport] = []

    def stop(snapshot: dpskit.FleetProgress) -> None:
        if snapshot.provisioned >= 1 and snapshot.retries >= 1:
            raise KeyboardInterrupt

    fleet = dpskit.Fleet(setup.dps, authority=setup.authority, count=4, prefix="waiting-")
    with pytest.raises(KeyboardInterrupt):
        outcomes.append(fleet.run(progress=False, on_progress=stop))
    assert not outcomes
    setup.dps.set_registration_quota(None)
    # The DPS and the devices are fine afterwards: the same fleet runs to completion.
    assert fleet.run(progress=False).outcomes == {"completed": 4}


def test_run_async_lets_other_tasks_run_and_cancelling_it_stops_the_devices(
    setup: Setup,
) -> None:
    import asyncio

    async def scenario() -> tuple[dpskit.FleetReport, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        plan = dpskit.TelemetryPlan(interval=0.05, count=10)
        fleet = dpskit.Fleet(
            setup.dps, authority=setup.authority, count=20, prefix="async-", telemetry=plan
        )
        report = await fleet.run_async(progress=False)
        # A long plan, cancelled from outside: the task ends and the devices with it.
        slow = dpskit.TelemetryPlan(interval=30, count=10)
        long_run = asyncio.create_task(
            dpskit.Fleet(
                setup.dps, authority=setup.authority, count=5, prefix="async-long-", telemetry=slow
            ).run_async(progress=False)
        )
        await asyncio.sleep(1.0)
        long_run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_run
        ticking.cancel()
        return report, ticks

    report, ticks = asyncio.run(scenario())
    assert report.outcomes == {"completed": 20}
    assert report.messages_acknowledged == 200
    assert ticks > 10  # the loop kept running other tasks during the fleet
