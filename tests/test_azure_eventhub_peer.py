"""The official Event Hubs client (``azure-eventhub`` 5.x on its pure-Python AMQP stack),
unchanged, reading a hub's built-in Event Hub-compatible endpoint on the local cloud.

Devices send telemetry with dpskit's ``HubClient``; ``EventHubConsumerClient`` reads it over
AMQP on the cloud's ``amqp_port`` (``custom_endpoint_address``, since the client dials 5671
whatever the connection string's ``Endpoint`` says), trusting the emulator's CA through
``connection_verify``: the endpoint's and partitions' properties, events with what IoT Hub
adds, every starting position the client offers, consumer groups, tokens it must refuse, and
events read back after the emulator restarts on the same data folder.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.eventhub", reason="the official Event Hubs client is not installed")

from azure.core.credentials import AzureSasCredential
from azure.eventhub import EventData, EventHubConsumerClient, TransportType
from azure.eventhub.exceptions import AuthenticationError, EventHubError

import dpskit
from conftest import cloud_for_the_official_service_sdk

KEY = "a2V5LW9mLXNpeHRlZW4tYnl0ZXMtYWFhYWFhYWFhYWFh"


def _owner_key(hub: dpskit.Hub) -> str:
    return hub.connection_string.split("SharedAccessKey=", 1)[1]


def _policies(data_dir: Path, hub: dpskit.Hub) -> dict[str, str]:
    """The hub's policies and their primary keys, as the emulator stored them."""
    with sqlite3.connect(data_dir / "state.sqlite3") as db:
        (body,) = db.execute(
            "SELECT body FROM documents WHERE kind = 'hub' AND key = ?", (hub.name,)
        ).fetchone()
    return {p["keyName"]: p["primaryKey"] for p in json.loads(body)["policies"]}


def _consumer(
    cloud: dpskit.LocalCloud,
    hub: dpskit.Hub,
    trust: Path,
    *,
    consumer_group: str = "$Default",
    policy: str = "iothubowner",
    key: str | None = None,
    credential: Any = None,
) -> EventHubConsumerClient:
    options: dict[str, Any] = {
        "consumer_group": consumer_group,
        "connection_verify": str(trust),
        "custom_endpoint_address": f"sb://{hub.host_name}:{cloud.amqp_port}",
        "retry_total": 0,
        # AMQP over TLS: with a custom endpoint and no transport named, the client would
        # choose WebSockets.
        "transport_type": TransportType.Amqp,
    }
    if credential is not None:
        return EventHubConsumerClient(hub.host_name, hub.name, credential=credential, **options)
    connection_string = (
        f"Endpoint=sb://{hub.host_name}/;SharedAccessKeyName={policy};"
        f"SharedAccessKey={key or _owner_key(hub)};EntityPath={hub.name}"
    )
    return EventHubConsumerClient.from_connection_string(connection_string, **options)


def _read(
    client: EventHubConsumerClient,
    partition: str,
    count: int,
    timeout: float = 30.0,
    until: threading.Event | None = None,
    **start: Any,
) -> tuple[list[EventData], list[Exception]]:
    """The first ``count`` events of a partition from a starting position (from the start
    unless told: the client's own default is ``@latest``; fewer events if ``timeout`` passes
    first), and the errors the client reported meanwhile."""
    start.setdefault("starting_position", "-1")
    events: list[EventData] = []
    errors: list[Exception] = []
    done = until or threading.Event()

    def on_event(_: Any, event: EventData | None) -> None:
        if event is not None:
            events.append(event)
        if len(events) >= count:
            done.set()

    def on_error(_: Any, error: Exception) -> None:
        errors.append(error)
        done.set()

    receiver = threading.Thread(
        target=client.receive,
        kwargs={"on_event": on_event, "on_error": on_error, "partition_id": partition, **start},
        daemon=True,
    )
    receiver.start()
    done.wait(timeout)
    client.close()
    receiver.join(15)
    # Events keep arriving until the client closes; the first `count` are the answer.
    return events[:count], errors


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _strings(bag: dict[Any, Any] | None) -> dict[str, Any]:
    return {_text(k): _text(v) for k, v in (bag or {}).items()}


async def _send(cloud: dpskit.LocalCloud, hub: dpskit.Hub, device_id: str, count: int) -> None:
    async with dpskit.HubClient.connect(
        f"{hub.host_name}:{cloud.mqtt_port}",
        device_id=device_id,
        symmetric_key=KEY,
        trust=cloud.trust_pem,
    ) as client:
        for n in range(count):
            await client.send_telemetry(
                {"n": n},
                {"unit": "C", "n": str(n)},
                message_id=f"{device_id}-{n}",
                correlation_id=f"corr-{n}",
            )
            # Distinct enqueued milliseconds, so a time names one event.
            await asyncio.sleep(0.01)


def _partition_of(client: EventHubConsumerClient) -> str:
    """The one partition holding events (one device's, as each test's hub has)."""
    holding = [
        p for p in client.get_partition_ids() if not client.get_partition_properties(p)["is_empty"]
    ]
    assert len(holding) == 1, holding
    return holding[0]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path]]:
    data_dir = tmp_path_factory.mktemp("eventhub-cloud")
    with dpskit.LocalCloud(data_dir, port=0, web_port=0, amqp_port=0) as cloud:
        hub = cloud.create_hub("eh-peer")
        hub.create_device("dev-a", symmetric_key=True, primary_key=KEY, secondary_key=KEY)
        asyncio.run(_send(cloud, hub, "dev-a", 5))
        trust = data_dir / "emulator-ca.pem"
        trust.write_text(cloud.trust_pem)
        yield cloud, hub, trust, data_dir


def test_the_endpoint_and_its_partitions_describe_themselves(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    client = _consumer(cloud, hub, trust)
    with client:
        endpoint = client.get_eventhub_properties()
        assert endpoint["eventhub_name"] == hub.name
        assert endpoint["partition_ids"] == ["0", "1", "2", "3"]
        assert endpoint["created_at"].year >= 2024
        partition = _partition_of(client)
        properties = client.get_partition_properties(partition)
        assert properties["beginning_sequence_number"] == 0
        assert properties["is_empty"] is False
        assert int(properties["last_enqueued_offset"]) > 0
        others = [p for p in endpoint["partition_ids"] if p != partition]
        assert all(client.get_partition_properties(p)["is_empty"] for p in others)
        with pytest.raises(EventHubError):
            client.get_partition_properties("4")


def test_events_carry_what_the_device_sent_and_what_iot_hub_adds(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    with _consumer(cloud, hub, trust) as probe:
        partition = _partition_of(probe)
    events, errors = _read(_consumer(cloud, hub, trust), partition, 5, starting_position="-1")
    assert errors == []
    assert [e.sequence_number for e in events] == [0, 1, 2, 3, 4]
    first = events[0]
    assert json.loads(first.body_as_str()) == {"n": 0}
    assert _strings(first.properties) == {"unit": "C", "n": "0"}
    system = _strings(first.system_properties)
    assert system["message-id"] == "dev-a-0"
    assert system["correlation-id"] == "corr-0"
    assert system["content-type"] == "application/json"
    assert system["content-encoding"] == "utf-8"
    assert system["iothub-connection-device-id"] == "dev-a"
    assert system["iothub-message-source"] == "Telemetry"
    assert json.loads(system["iothub-connection-auth-method"])["type"] == "sas"
    assert system["iothub-connection-auth-generation-id"]
    assert first.enqueued_time is not None
    # A timestamp, which pyamqp leaves in Unix milliseconds.
    assert system["iothub-enqueuedtime"] == round(first.enqueued_time.timestamp() * 1000)
    offsets = [int(e.offset) for e in events if e.offset is not None]
    assert len(offsets) == 5
    assert offsets == sorted(set(offsets)), "offsets grow and never repeat"


def test_every_starting_position_reads_from_where_it_says(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    with _consumer(cloud, hub, trust) as probe:
        partition = _partition_of(probe)
    everything, _ = _read(_consumer(cloud, hub, trust), partition, 5)
    third = everything[2]

    def sequence_numbers(count: int, **start: Any) -> list[int]:
        events, errors = _read(_consumer(cloud, hub, trust), partition, count, **start)
        assert errors == []
        numbers = [e.sequence_number for e in events]
        return [n for n in numbers if n is not None]

    assert sequence_numbers(2, starting_position=third.offset) == [3, 4]
    assert sequence_numbers(
        3, starting_position=third.offset, starting_position_inclusive=True
    ) == [2, 3, 4]
    assert sequence_numbers(2, starting_position=2) == [3, 4]
    assert sequence_numbers(3, starting_position=2, starting_position_inclusive=True) == [2, 3, 4]
    assert sequence_numbers(2, starting_position=third.enqueued_time) == [3, 4]
    assert sequence_numbers(
        3, starting_position=third.enqueued_time, starting_position_inclusive=True
    ) == [2, 3, 4]
    # A map of partition ids works the same way.
    assert sequence_numbers(1, starting_position={partition: 3}) == [4]


def test_a_reader_at_latest_gets_only_what_is_sent_after_it_started(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    with _consumer(cloud, hub, trust) as probe:
        partition = _partition_of(probe)
        before = probe.get_partition_properties(partition)["last_enqueued_sequence_number"]
    arrived = threading.Event()
    result: list[tuple[list[EventData], list[Exception]]] = []
    reader = threading.Thread(
        target=lambda: result.append(
            _read(
                _consumer(cloud, hub, trust),
                partition,
                1,
                until=arrived,
                starting_position="@latest",
            )
        )
    )
    reader.start()
    # The reader's link may not be attached yet: keep sending until one arrives live.
    for _ in range(60):
        asyncio.run(_send(cloud, hub, "dev-a", 1))
        if arrived.wait(0.5):
            break
    reader.join(30)
    events, errors = result[0]
    assert errors == []
    assert events, "nothing sent after the reader started reached it"
    assert all(e.sequence_number > before for e in events)


def test_tokens_that_do_not_grant_service_connect_on_this_hub_are_refused(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, data_dir = world
    other = cloud.create_hub("eh-peer-other")
    policies = _policies(data_dir, hub)
    refused = {
        "wrong key": {"key": base64.b64encode(b"x" * 32).decode()},
        "policy without ServiceConnect": {
            "policy": "registryRead",
            "key": policies["registryRead"],
        },
        "another hub's key": {"key": _owner_key(other)},
    }
    for why, options in refused.items():
        started = time.monotonic()
        with pytest.raises(AuthenticationError):
            _consumer(cloud, hub, trust, **options).get_eventhub_properties()
        assert time.monotonic() - started < 30, f"{why}: refused only after a wait"
    # The service policy, which has ServiceConnect only, is enough.
    with _consumer(cloud, hub, trust, policy="service", key=policies["service"]) as client:
        assert client.get_eventhub_properties()["eventhub_name"] == hub.name

    def token(expiry: int, key: str) -> str:
        resource = urllib.parse.quote_plus(f"sb://{hub.host_name}/{hub.name}")
        signed = f"{resource}\n{expiry}".encode()
        # Signed as the Event Hubs clients sign: the key's text is the HMAC key.
        signature = base64.b64encode(
            hmac.new(key.encode(), signed, hashlib.sha256).digest()
        ).decode()
        return (
            f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote_plus(signature)}"
            f"&se={expiry}&skn=service"
        )

    expired = AzureSasCredential(token(int(time.time()) - 60, policies["service"]))
    with pytest.raises(AuthenticationError):
        _consumer(cloud, hub, trust, credential=expired).get_eventhub_properties()
    valid = AzureSasCredential(token(int(time.time()) + 3600, policies["service"]))
    with _consumer(cloud, hub, trust, credential=valid) as client:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]

    # A reader with a refused token is told, not left waiting.
    events, errors = _read(
        _consumer(cloud, hub, trust, key=_owner_key(other)), "0", 1, starting_position="-1"
    )
    assert events == []
    assert errors, "the refused reader saw no error"


def test_consumer_groups_read_independently_and_events_survive_a_restart(
    tmp_path: Path,
) -> None:
    with dpskit.LocalCloud(tmp_path, port=0, web_port=0, amqp_port=0) as cloud:
        hub = cloud.create_hub("eh-restart")
        hub.create_device("dev-r", symmetric_key=True, primary_key=KEY, secondary_key=KEY)
        asyncio.run(_send(cloud, hub, "dev-r", 3))
        # Through ARM, as azure-mgmt-iothub makes one; kept across the restart.
        hub.create_consumer_group("analytics")
    trust = tmp_path / "emulator-ca.pem"
    with dpskit.LocalCloud(tmp_path, port=0, web_port=0, amqp_port=0) as cloud:
        hub = cloud.hub("eh-restart")
        trust.write_text(cloud.trust_pem)
        with _consumer(cloud, hub, trust) as probe:
            partition = _partition_of(probe)
        for group in ["$Default", "analytics", "$Default"]:
            events, errors = _read(_consumer(cloud, hub, trust, consumer_group=group), partition, 3)
            assert errors == []
            assert [json.loads(e.body_as_str()) for e in events] == [
                {"n": 0},
                {"n": 1},
                {"n": 2},
            ], group
        events, errors = _read(_consumer(cloud, hub, trust, consumer_group="nobody"), partition, 1)
        assert events == []
        assert errors, "a reader of an unknown consumer group saw no error"


def test_a_c2d_message_from_the_official_service_sdk_reaches_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``azure-iot-hub``'s ``send_c2d_message`` (uamqp) always dials 5671 and trusts only
    certifi's bundle: it needs the port free here and the emulator's CA in that bundle."""
    with cloud_for_the_official_service_sdk(tmp_path, monkeypatch) as cloud:
        from azure.iot.hub import IoTHubRegistryManager  # type: ignore[import-untyped]

        hub = cloud.create_hub("c2d-peer")
        hub.create_device("dev-c", symmetric_key=True, primary_key=KEY, secondary_key=KEY)
        registry = IoTHubRegistryManager.from_connection_string(hub.connection_string)

        async def receive() -> dpskit.CloudMessage:
            async with dpskit.HubClient.connect(
                f"{hub.host_name}:{cloud.mqtt_port}",
                device_id="dev-c",
                symmetric_key=KEY,
                trust=cloud.trust_pem,
            ) as client:
                messages = client.messages()
                waiting = asyncio.ensure_future(anext(messages))
                await asyncio.get_running_loop().run_in_executor(
                    None,
                    lambda: registry.send_c2d_message(
                        "dev-c",
                        "hello",
                        {"k": "v", "messageId": "m-42", "correlationId": "c-1"},
                    ),
                )
                return await asyncio.wait_for(waiting, 30)

        try:
            message = asyncio.run(receive())
        finally:
            registry.amqp_svc_client.disconnect_sync()
        assert message.body == b"hello"
        assert message.message_id == "m-42"
        assert message.properties["k"] == "v"
        assert message.system_properties["cid"] == "c-1"


def test_a_reader_with_a_higher_owner_level_takes_the_partition_over(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    with _consumer(cloud, hub, trust) as probe:
        partition = _partition_of(probe)
    first_errors: list[Exception] = []
    first_reading = threading.Event()
    first = _consumer(cloud, hub, trust)

    def on_event(_: Any, event: EventData | None) -> None:
        first_reading.set()

    receiver = threading.Thread(
        target=first.receive,
        kwargs={
            "on_event": on_event,
            "on_error": lambda _, error: first_errors.append(error),
            "partition_id": partition,
            "starting_position": "-1",
            "owner_level": 1,
        },
        daemon=True,
    )
    receiver.start()
    assert first_reading.wait(30), "the first reader read nothing"
    # A higher owner level takes over: it reads, and the first reader is told.
    events, errors = _read(
        _consumer(cloud, hub, trust), partition, 5, starting_position="-1", owner_level=2
    )
    assert errors == []
    assert len(events) == 5
    deadline = time.monotonic() + 30
    while not first_errors and time.monotonic() < deadline:
        time.sleep(0.05)
    first.close()
    receiver.join(15)
    assert first_errors, "the displaced reader was not told"


def test_a_reader_tracking_the_last_enqueued_event_is_told_it_with_each_event(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    cloud, hub, trust, _ = world
    with _consumer(cloud, hub, trust) as probe:
        partition = _partition_of(probe)
        last = probe.get_partition_properties(partition)
    told: list[dict[str, Any] | None] = []
    done = threading.Event()
    client = _consumer(cloud, hub, trust)

    def on_event(context: Any, event: EventData | None) -> None:
        told.append(context.last_enqueued_event_properties)
        done.set()

    receiver = threading.Thread(
        target=client.receive,
        kwargs={
            "on_event": on_event,
            "partition_id": partition,
            "starting_position": "-1",
            "track_last_enqueued_event_properties": True,
        },
        daemon=True,
    )
    receiver.start()
    assert done.wait(30), "nothing was read"
    client.close()
    receiver.join(15)
    properties = told[0]
    assert properties is not None
    assert properties["sequence_number"] == last["last_enqueued_sequence_number"]
    assert properties["offset"] == last["last_enqueued_offset"]
    assert properties["enqueued_time"] == last["last_enqueued_time_utc"]
    assert properties["retrieval_time"] is not None


# azure-eventhub 5.15 still ships the C transport, deprecated; it is its users' peer until then.
@pytest.mark.filterwarnings("ignore:uAMQP legacy support:DeprecationWarning")
def test_the_uamqp_transport_reads_the_same_endpoint(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    pytest.importorskip("uamqp", reason="the C AMQP transport is not installed")
    cloud, hub, trust, _ = world
    connection_string = (
        f"Endpoint=sb://{hub.host_name}/;SharedAccessKeyName=iothubowner;"
        f"SharedAccessKey={_owner_key(hub)};EntityPath={hub.name}"
    )

    def consumer() -> EventHubConsumerClient:
        return EventHubConsumerClient.from_connection_string(
            connection_string,
            consumer_group="$Default",
            connection_verify=str(trust),
            custom_endpoint_address=f"sb://{hub.host_name}:{cloud.amqp_port}",
            transport_type=TransportType.Amqp,
            retry_total=0,
            uamqp_transport=True,
        )

    with consumer() as probe:
        assert probe.get_eventhub_properties()["partition_ids"] == ["0", "1", "2", "3"]
        partition = _partition_of(probe)
    events, errors = _read(consumer(), partition, 3)
    assert errors == []
    assert [e.sequence_number for e in events] == [0, 1, 2]
    assert _strings(events[0].system_properties)["iothub-connection-device-id"] == "dev-a"


def test_the_async_consumer_reads_the_same_events_and_properties(
    world: tuple[dpskit.LocalCloud, dpskit.Hub, Path, Path],
) -> None:
    from azure.eventhub.aio import EventHubConsumerClient as AsyncConsumer

    cloud, hub, trust, _ = world
    connection_string = (
        f"Endpoint=sb://{hub.host_name}/;SharedAccessKeyName=iothubowner;"
        f"SharedAccessKey={_owner_key(hub)};EntityPath={hub.name}"
    )

    async def scenario() -> tuple[list[str], dict[str, Any], list[Any]]:
        client = AsyncConsumer.from_connection_string(
            connection_string,
            consumer_group="$Default",
            connection_verify=str(trust),
            custom_endpoint_address=f"sb://{hub.host_name}:{cloud.amqp_port}",
            transport_type=TransportType.Amqp,
            retry_total=0,
        )
        async with client:
            ids = await client.get_partition_ids()
            # dev-a is the module hub's only sender (earlier tests may have added to it).
            holding = [p for p in ids if not (await client.get_partition_properties(p))["is_empty"]]
            assert len(holding) == 1, holding
            properties = await client.get_partition_properties(holding[0])
            events: list[Any] = []
            done = asyncio.Event()

            async def on_event(_: Any, event: EventData | None) -> None:
                if event is not None:
                    events.append(event)
                if len(events) >= 5:
                    done.set()

            receiving = asyncio.create_task(
                client.receive(on_event, partition_id=holding[0], starting_position="-1")
            )
            await asyncio.wait_for(done.wait(), 30)
            # receive() runs until cancelled (its processor sleeps between balancing rounds).
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
        return ids, properties, events

    ids, properties, received = asyncio.run(scenario())
    # The first five are the fixture's (more may have arrived before the receiver stopped).
    events = received[:5]
    assert ids == ["0", "1", "2", "3"]
    assert properties["beginning_sequence_number"] == 0
    assert [e.sequence_number for e in events] == [0, 1, 2, 3, 4]
    assert [json.loads(e.body_as_str())["n"] for e in events] == [0, 1, 2, 3, 4]
    assert _strings(events[0].system_properties)["iothub-connection-device-id"] == "dev-a"
