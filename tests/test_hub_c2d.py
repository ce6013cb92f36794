"""dpskit's own cloud-to-device sender and feedback receiver (``Hub.send_c2d``,
``Hub.c2d_feedback``, ``Hub.wait_for_feedback``, ``dpskit hub send-c2d``): one Rust AMQP client
for the local cloud and Azure, here against the emulator's AMQP endpoint over real TLS.

A device connected with dpskit's ``HubClient`` (MQTT) must receive what was sent (body, ids,
content type, properties, expiry); the hub's refusals must arrive as typed errors; a message
asking for feedback must be reported once the device completes it; and the message must be
the one the official ``azure-iot-hub`` sender writes for the same inputs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dpskit
from conftest import AzureAtLocalCloud, cloud_for_the_official_service_sdk
from dpskit.cli import main

KEY = "a2V5LW9mLXNpeHRlZW4tYnl0ZXMtYWFhYWFhYWFhYWFh"


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0, amqp_port=0, web_port=0) as running:
        yield running


def _hub(cloud: dpskit.LocalCloud, *devices: str) -> dpskit.Hub:
    hub = cloud.create_hub("c2d-hub")
    for device_id in devices:
        hub.create_device(device_id, symmetric_key=True, primary_key=KEY, secondary_key=KEY)
    return hub


async def _receive(
    cloud: dpskit.LocalCloud,
    hub: dpskit.Hub,
    device_id: str,
    count: int,
    send: Callable[[], object],
) -> list[dpskit.CloudMessage]:
    """Connects `device_id`, runs `send` (a blocking callable) and returns the first `count`
    messages the device receives (each completed by its PUBACK)."""
    async with dpskit.HubClient.connect(
        f"{hub.host_name}:{cloud.mqtt_port}",
        device_id=device_id,
        symmetric_key=KEY,
        trust=cloud.trust_pem,
    ) as client:
        messages = client.messages()
        received: list[dpskit.CloudMessage] = []

        async def take() -> None:
            async for message in messages:
                received.append(message)
                if len(received) >= count:
                    return

        taking = asyncio.ensure_future(take())
        await asyncio.get_running_loop().run_in_executor(None, send)
        await asyncio.wait_for(taking, 30)
        return received


def test_a_message_arrives_with_its_ids_content_type_properties_and_expiry(
    cloud: dpskit.LocalCloud,
) -> None:
    hub = _hub(cloud, "c2d-dev")
    sent: list[str] = []

    def send() -> None:
        sent.append(
            hub.send_c2d(
                "c2d-dev",
                {"command": "calibrate"},
                properties={"priority": "high", "n": "1"},
                message_id="m-1",
                correlation_id="c-1",
                content_type="application/json",
                content_encoding="utf-8",
                expires_in=timedelta(minutes=5),
            )
        )
        # The same connection carries the next one; a fresh GUID names it.
        sent.append(hub.send_c2d("c2d-dev", "plain"))

    before = datetime.now(timezone.utc)
    first, second = asyncio.run(_receive(cloud, hub, "c2d-dev", 2, send))
    assert sent[0] == "m-1"
    assert len(sent[1]) == 36, "a GUID"
    assert sent[1] != sent[0]
    assert first.json() == {"command": "calibrate"}
    assert first.message_id == "m-1"
    assert first.properties == {"priority": "high", "n": "1"}
    system = first.system_properties
    assert (system["cid"], system["ct"], system["ce"]) == ("c-1", "application/json", "utf-8")
    assert system["to"] == "/devices/c2d-dev/messages/devicebound"
    expiry = datetime.fromisoformat(system["exp"].replace("Z", "+00:00")[:26] + "+00:00")
    assert before + timedelta(minutes=4) < expiry < before + timedelta(minutes=6), system["exp"]
    assert (second.body, second.message_id, second.properties) == (b"plain", sent[1], {})


def test_the_hubs_refusals_are_typed_errors(cloud: dpskit.LocalCloud) -> None:
    hub = _hub(cloud, "full-dev")
    with pytest.raises(dpskit.NotFoundError) as missing:
        hub.send_c2d("nobody", b"x")
    assert missing.value.error_code == 404001
    for i in range(50):
        hub.send_c2d("full-dev", b"queued", message_id=f"q-{i}")
    with pytest.raises(dpskit.ServiceError) as full:
        hub.send_c2d("full-dev", b"one too many")
    assert full.value.error_code == 403004
    assert not isinstance(full.value, dpskit.AuthenticationError)
    # Refused by dpskit before anything is sent: not one of the four ack values, or a lifetime
    # that is not positive.
    with pytest.raises(dpskit.ConfigError, match="iothub-ack"):
        hub.send_c2d("full-dev", b"x", ack="always")  # type: ignore[arg-type]
    with pytest.raises(dpskit.ConfigError):
        hub.send_c2d("full-dev", b"x", expires_in=0)


def test_a_bad_key_is_an_authentication_error(cloud: dpskit.LocalCloud) -> None:
    hub = _hub(cloud, "key-dev")
    hub._primary_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktISE="
    with pytest.raises(dpskit.AuthenticationError):
        hub.send_c2d("key-dev", b"x")


def test_on_azure_a_message_goes_over_amqp(cloud: dpskit.LocalCloud) -> None:
    _hub(cloud, "az-dev")
    remote = AzureAtLocalCloud(cloud).hub("c2d-hub")
    [message] = asyncio.run(
        _receive(
            cloud,
            cloud.hub("c2d-hub"),
            "az-dev",
            1,
            lambda: remote.send_c2d("az-dev", b"from azure", properties={"k": "v"}),
        )
    )
    assert (message.body, message.properties) == (b"from azure", {"k": "v"})


def test_ack_full_reports_the_devices_completion(cloud: dpskit.LocalCloud) -> None:
    hub = _hub(cloud, "ack-dev")
    ids: list[str] = []

    def send() -> None:
        ids.append(hub.send_c2d("ack-dev", b"please confirm", ack="full"))
        ids.append(hub.send_c2d("ack-dev", b"and this", ack="positive", message_id="m-2"))

    asyncio.run(_receive(cloud, hub, "ack-dev", 2, send))
    # The second's feedback may come first or in the same feedback message: kept, not lost.
    feedback = hub.wait_for_feedback(ids[0], timeout=30)
    assert (feedback.original_message_id, feedback.device_id) == (ids[0], "ack-dev")
    assert (feedback.status, feedback.description) == ("Success", "Success")
    assert abs(feedback.enqueued_time - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert feedback.device_generation_id
    second = hub.wait_for_feedback("m-2", timeout=30)
    assert second.status == "Success"


def test_feedback_streams_as_it_arrives(cloud: dpskit.LocalCloud) -> None:
    hub = _hub(cloud, "stream-dev")

    async def scenario() -> list[dpskit.C2dFeedback]:
        await _receive(
            cloud,
            hub,
            "stream-dev",
            3,
            lambda: [
                hub.send_c2d("stream-dev", b"x", ack="full", message_id=f"s-{i}") for i in range(3)
            ],
        )
        seen: list[dpskit.C2dFeedback] = []
        async for record in hub.c2d_feedback(timeout=10):
            seen.append(record)
            if len(seen) == 3:
                break
        return seen

    seen = asyncio.run(scenario())
    assert sorted(r.original_message_id for r in seen) == ["s-0", "s-1", "s-2"]
    assert {r.status for r in seen} == {"Success"}


def test_no_feedback_in_time_is_a_timeout(cloud: dpskit.LocalCloud) -> None:
    hub = _hub(cloud, "quiet-dev")
    # Nobody asked for feedback about this one: nothing comes.
    message_id = hub.send_c2d("quiet-dev", b"x")
    with pytest.raises(dpskit.OperationTimeoutError):
        hub.wait_for_feedback(message_id, timeout=1)

    async def stream() -> list[dpskit.C2dFeedback]:
        return [record async for record in hub.c2d_feedback(timeout=1)]

    # The stream's timeout ends it quietly, with nothing read.
    assert asyncio.run(stream()) == []


def test_cli_sends_and_waits_for_the_feedback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with dpskit.LocalCloud(tmp_path, port=0, amqp_port=0, web_port=0) as cloud:
        hub = _hub(cloud, "cli-dev")
        argv = ["hub", "send-c2d", "cli-dev", "hello from the shell", "--local", str(tmp_path)]
        options = ["--property", "k=v", "--message-id", "cli-1", "--ttl", "60"]

        def send() -> None:
            assert main([*argv, *options, "--wait", "--timeout", "30"]) == 0

        [message] = asyncio.run(_receive(cloud, hub, "cli-dev", 1, send))
    assert (message.body, message.message_id) == (b"hello from the shell", "cli-1")
    # --wait asks for full feedback, which the device sees as IoT Hub shows it.
    assert message.properties == {"k": "v", "iothub-ack": "full"}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"messageId": "cli-1", "deviceId": "cli-dev"}
    assert lines[1]["feedback"]["originalMessageId"] == "cli-1"
    assert lines[1]["feedback"]["statusCode"] == "Success"


def test_cli_refuses_a_property_without_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "send-c2d", "cli-dev", "x", "--property", "novalue"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_dpskit_sends_what_the_official_service_sdk_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request parity: for the same inputs, the device receives the same message from dpskit's
    sender as from ``azure-iot-hub``'s ``send_c2d_message`` (uamqp, which always dials 5671 and
    trusts only certifi's bundle)."""
    with cloud_for_the_official_service_sdk(tmp_path, monkeypatch) as cloud:
        from azure.iot.hub import IoTHubRegistryManager  # type: ignore[import-untyped]

        hub = _hub(cloud, "parity-dev")
        registry = IoTHubRegistryManager.from_connection_string(hub.connection_string)

        def send_both() -> None:
            registry.send_c2d_message(
                "parity-dev",
                '{"a": 1}',
                {
                    "messageId": "official",
                    "correlationId": "c-9",
                    "contentType": "application/json",
                    "contentEncoding": "utf-8",
                    "iothub-ack": "full",
                    "k": "v",
                },
            )
            hub.send_c2d(
                "parity-dev",
                '{"a": 1}',
                message_id="dpskit",
                correlation_id="c-9",
                content_type="application/json",
                content_encoding="utf-8",
                ack="full",
                properties={"k": "v"},
            )

        try:
            official, ours = asyncio.run(_receive(cloud, hub, "parity-dev", 2, send_both))
        finally:
            registry.amqp_svc_client.disconnect_sync()
        assert (official.message_id, ours.message_id) == ("official", "dpskit")
        assert ours.body == official.body == b'{"a": 1}'
        assert ours.properties == official.properties
        drop_id = {"mid"}
        assert {k: v for k, v in ours.system_properties.items() if k not in drop_id} == {
            k: v for k, v in official.system_properties.items() if k not in drop_id
        }
        # Both asked for full feedback: both are reported the same way.
        for message_id in ("official", "dpskit"):
            assert hub.wait_for_feedback(message_id, timeout=30).status == "Success"
