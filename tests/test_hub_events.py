"""dpskit's own reader of a hub's built-in Event Hub-compatible endpoint (``Hub.events``,
``Hub.retained_events``): the same Rust AMQP client for the local cloud and Azure, here
against the emulator over real TLS on its AMQP port, from the hub's
``event_hub_connection_string`` (the ``service`` policy, as the portal shows it).

Devices send with dpskit's ``HubClient``; the reader must see every event once, in order per
partition, with what the device set (properties, ids, content type) and what IoT Hub adds,
from every starting position, through consumer groups, and refuse a bad key with a typed
error rather than hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dpskit
from conftest import AzureAtLocalCloud
from dpskit.cli import main

KEY = "a2V5LW9mLXNpeHRlZW4tYnl0ZXMtYWFhYWFhYWFhYWFh"


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0, amqp_port=0, web_port=0) as running:
        yield running


async def _send(
    cloud: dpskit.LocalCloud, hub: dpskit.Hub, device_id: str, count: int, first: int = 0
) -> None:
    async with dpskit.HubClient.connect(
        f"{hub.host_name}:{cloud.mqtt_port}",
        device_id=device_id,
        symmetric_key=KEY,
        trust=cloud.trust_pem,
    ) as client:
        for n in range(first, first + count):
            await client.send_telemetry(
                {"n": n},
                {"unit": "C"},
                message_id=f"{device_id}-{n}",
                correlation_id=f"corr-{n}",
            )
            # Distinct enqueued milliseconds, so a time names one event.
            await asyncio.sleep(0.01)


def _hub_with_devices(cloud: dpskit.LocalCloud, devices: list[str]) -> dpskit.Hub:
    hub = cloud.create_hub("events-hub", partition_count=4)
    for device_id in devices:
        hub.create_device(device_id, symmetric_key=True, primary_key=KEY, secondary_key=KEY)
    return hub


async def _take(hub: dpskit.Hub, count: int, **options: object) -> list[dpskit.HubEvent]:
    events: list[dpskit.HubEvent] = []

    async def read() -> None:
        async for event in hub.events(**options):  # type: ignore[arg-type]
            events.append(event)
            if len(events) >= count:
                return

    await asyncio.wait_for(read(), 30)
    return events


def test_retained_events_are_every_message_once_with_what_the_device_and_hub_set(
    cloud: dpskit.LocalCloud,
) -> None:
    devices = [f"reader-{i}" for i in range(6)]
    hub = _hub_with_devices(cloud, devices)

    async def send_all() -> None:
        await asyncio.gather(*(_send(cloud, hub, d, 5) for d in devices))

    asyncio.run(send_all())
    events = hub.retained_events()
    assert len(events) == 30
    assert {(e.device_id, e.json()["n"]) for e in events} == {
        (d, n) for d in devices for n in range(5)
    }
    by_partition: dict[str, list[dpskit.HubEvent]] = {}
    for event in events:
        by_partition.setdefault(event.partition, []).append(event)
    assert set(by_partition) <= {"0", "1", "2", "3"}
    for partition, found in by_partition.items():
        # Numbered from 0 in each partition, without gaps; a device keeps its partition.
        numbers = sorted(e.sequence_number for e in found)
        assert numbers == list(range(len(found))), partition
    assert len({(e.device_id, e.partition) for e in events}) == len(devices)
    sample = next(e for e in events if e.device_id == "reader-3" and e.json()["n"] == 2)
    assert sample.message_id == "reader-3-2"
    assert sample.correlation_id == "corr-2"
    assert sample.properties == {"unit": "C"}
    assert sample.content_type == "application/json"
    assert sample.annotations["iothub-message-source"] == "Telemetry"
    assert "iothub-connection-auth-method" in sample.annotations
    assert sample.enqueued_time <= datetime.now(timezone.utc) + timedelta(seconds=5)


def test_every_start_position_and_live_events(cloud: dpskit.LocalCloud) -> None:
    hub = _hub_with_devices(cloud, ["solo"])
    asyncio.run(_send(cloud, hub, "solo", 5))
    [first] = [e for e in hub.retained_events() if e.json()["n"] == 0]
    partition = first.partition

    async def scenario() -> None:
        everything = await _take(hub, 5, starting="earliest", partitions=[partition])
        assert [e.json()["n"] for e in everything] == [0, 1, 2, 3, 4]
        after_two = await _take(hub, 2, starting=2, partitions=[partition])
        assert [e.sequence_number for e in after_two] == [3, 4]
        from_two = await _take(hub, 3, starting=2, inclusive=True, partitions=[partition])
        assert [e.sequence_number for e in from_two] == [2, 3, 4]
        after_offset = await _take(hub, 2, starting=everything[2].offset)
        assert [e.sequence_number for e in after_offset] == [3, 4]
        since = everything[3].enqueued_time
        by_time = await _take(hub, 2, starting=since, inclusive=True)
        assert [e.sequence_number for e in by_time][-1] == 4

        # From now on: only what is sent after the receivers attached.
        live: list[dpskit.HubEvent] = []

        async def watch() -> None:
            async for event in hub.events(starting="latest"):
                live.append(event)
                if len(live) == 3:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.0)
        await _send(cloud, hub, "solo", 3, first=100)
        await asyncio.wait_for(watcher, 30)
        assert [e.json()["n"] for e in live] == [100, 101, 102]

    asyncio.run(scenario())


def test_unknown_consumer_groups_bad_keys_and_naive_times_are_refused(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = _hub_with_devices(cloud, ["one"])
    asyncio.run(_send(cloud, hub, "one", 1))
    with pytest.raises(dpskit.NotFoundError, match="nobody"):
        asyncio.run(_take(hub, 1, consumer_group="nobody", starting="earliest"))
    with pytest.raises(dpskit.ConfigError, match="timezone"):
        asyncio.run(_take(hub, 1, starting=datetime(2026, 1, 1)))
    # A key the hub never issued: refused at the token, not a hang.
    hub._service_key = "d3Jvbmcta2V5LW9mLXNpeHRlZW4tYnl0ZXM="
    with pytest.raises(dpskit.AuthenticationError):
        hub.retained_events()


def test_the_monitor_command_prints_a_hubs_events_from_a_running_cloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with dpskit.LocalCloud(tmp_path, port=0, amqp_port=0, web_port=0) as cloud:
        hub = _hub_with_devices(cloud, ["cli-a", "cli-b"])
        asyncio.run(_send(cloud, hub, "cli-a", 2))
        asyncio.run(_send(cloud, hub, "cli-b", 1))
        argv = ["hub", "monitor", "events-hub", "--local", str(tmp_path), "--starting"]
        status = main([*argv, "earliest", "--device", "cli-a", "--count", "2", "--properties"])
        out = capsys.readouterr().out
        assert status == 0
        lines = [json.loads(line)["event"] for line in out.splitlines()]
        assert [(e["origin"], e["payload"]) for e in lines] == [
            ("cli-a", {"n": 0}),
            ("cli-a", {"n": 1}),
        ]
        assert lines[0]["properties"]["application"] == {"unit": "C"}
        assert lines[0]["properties"]["system"]["message-id"] == "cli-a-0"
        # Nothing new arrives: --timeout ends the watch with what it saw.
        status = main([*argv, "latest", "--timeout", "1"])
        assert (status, capsys.readouterr().out) == (0, "")


def test_on_azure_telemetry_is_read_from_the_events_endpoint(cloud: dpskit.LocalCloud) -> None:
    hub = _hub_with_devices(cloud, ["az-a", "az-b"])
    asyncio.run(_send(cloud, hub, "az-a", 3))
    asyncio.run(_send(cloud, hub, "az-b", 2))
    azure = AzureAtLocalCloud(cloud)
    remote = azure.hub("events-hub")
    local = cloud.hub("events-hub").telemetry("az-a")
    read = remote.telemetry("az-a")
    assert [m.json() for m in read] == [m.json() for m in local] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m.message_id for m in read] == [m.message_id for m in local]
    assert [m.properties for m in read] == [m.properties for m in local]
    assert [m.content_type for m in read] == [m.content_type for m in local]
    assert {m.device_id for m in remote.telemetry()} == {"az-a", "az-b"}
    frame = read.to_pandas()
    assert list(frame["message_id"]) == ["az-a-0", "az-a-1", "az-a-2"]
