"""The official hub management SDK (``azure-mgmt-iothub``), unchanged but for its base URL and
TLS trust, sees and shapes each hub's built-in Event Hub-compatible endpoint as on Azure: the
partitions asked for at creation (fixed afterwards), the endpoint and path, and the consumer
groups it creates, lists, reads and deletes, with ARM's refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dpskit
from conftest import LocalToken

pytest.importorskip("azure.mgmt.iothub")

from azure.core.exceptions import HttpResponseError
from azure.mgmt.iothub import IotHubClient
from azure.mgmt.iothub.models import (
    EventHubConsumerGroupBodyDescription,
    EventHubConsumerGroupName,
    EventHubProperties,
    IotHubDescription,
    IotHubProperties,
    IotHubSkuInfo,
)

GROUP = dpskit.LocalCloud.resource_group


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


@pytest.fixture
def client(cloud: dpskit.LocalCloud, tmp_path: Path) -> IotHubClient:
    trust = tmp_path / "emulator-ca.pem"
    trust.write_text(cloud.trust_pem)
    return IotHubClient(
        LocalToken(),
        cloud.subscription_id,
        base_url=cloud.arm_endpoint,
        connection_verify=str(trust),
    )


def _hub_with_partitions(count: int | None) -> IotHubDescription:
    events = {} if count is None else {"events": EventHubProperties(partition_count=count)}
    return IotHubDescription(
        location="westeurope",
        sku=IotHubSkuInfo(name="S1", capacity=1),
        properties=IotHubProperties(event_hub_endpoints=events),
    )


def test_partitions_are_set_at_creation_and_shown_as_azure_shows_them(
    cloud: dpskit.LocalCloud, client: IotHubClient
) -> None:
    hubs = client.iot_hub_resource
    created = hubs.begin_create_or_update(GROUP, "eight-parts", _hub_with_partitions(8)).result()
    events = created.properties.event_hub_endpoints["events"]
    assert events.partition_count == 8
    assert events.partition_ids == [str(p) for p in range(8)]
    assert events.path == "eight-parts"
    host = cloud.hub("eight-parts").host_name
    assert events.endpoint == f"sb://{host}/"
    assert events.retention_time_in_days == 1

    # Azure's default when none is asked for.
    plain = hubs.begin_create_or_update(GROUP, "plain-parts", _hub_with_partitions(None)).result()
    assert plain.properties.event_hub_endpoints["events"].partition_count == 4

    # Fixed after creation: asking for another count is refused, the same one is fine.
    with pytest.raises(HttpResponseError) as changed:
        hubs.begin_create_or_update(GROUP, "eight-parts", _hub_with_partitions(16)).result()
    assert changed.value.status_code == 400
    again = hubs.begin_create_or_update(GROUP, "eight-parts", _hub_with_partitions(8)).result()
    assert again.properties.event_hub_endpoints["events"].partition_count == 8

    # Outside 2..128: refused, and no hub is created.
    for bad in (1, 129):
        with pytest.raises(HttpResponseError) as refused:
            hubs.begin_create_or_update(GROUP, f"bad-{bad}", _hub_with_partitions(bad)).result()
        assert refused.value.status_code == 400
        assert "partitionCount" in str(refused.value)
    assert {h.name for h in cloud.hubs()} == {"eight-parts", "plain-parts"}


def test_consumer_groups_are_created_listed_read_and_deleted(
    cloud: dpskit.LocalCloud, client: IotHubClient
) -> None:
    cloud.create_hub("groups-hub")
    hubs = client.iot_hub_resource

    def names() -> list[str]:
        listed = hubs.list_event_hub_consumer_groups(GROUP, "groups-hub", "events")
        return [g.name for g in listed]

    assert names() == ["$Default"]
    body = EventHubConsumerGroupBodyDescription(
        properties=EventHubConsumerGroupName(name="analytics")
    )
    made = hubs.create_event_hub_consumer_group(GROUP, "groups-hub", "events", "analytics", body)
    assert made.name == "analytics"
    assert made.type == "Microsoft.Devices/IotHubs/EventHubEndpoints/ConsumerGroups"
    # Creating it again changes nothing.
    hubs.create_event_hub_consumer_group(GROUP, "groups-hub", "events", "analytics", body)
    hubs.create_event_hub_consumer_group(GROUP, "groups-hub", "events", "spark_1", body)
    assert names() == ["$Default", "analytics", "spark_1"]
    assert hubs.get_event_hub_consumer_group(GROUP, "groups-hub", "events", "spark_1").name == (
        "spark_1"
    )

    # Names Event Hubs refuses, the default group, unknown groups and endpoints.
    for bad in ("-starts-with-hyphen", "has space", "x" * 51):
        with pytest.raises(HttpResponseError) as refused:
            hubs.create_event_hub_consumer_group(GROUP, "groups-hub", "events", bad, body)
        assert refused.value.status_code == 400
    with pytest.raises(HttpResponseError) as default:
        hubs.delete_event_hub_consumer_group(GROUP, "groups-hub", "events", "$Default")
    assert default.value.status_code == 400
    with pytest.raises(HttpResponseError) as unknown:
        hubs.get_event_hub_consumer_group(GROUP, "groups-hub", "events", "nobody")
    assert unknown.value.status_code == 404
    with pytest.raises(HttpResponseError) as endpoint:
        hubs.get_event_hub_consumer_group(GROUP, "groups-hub", "other", "analytics")
    assert endpoint.value.status_code == 404

    hubs.delete_event_hub_consumer_group(GROUP, "groups-hub", "events", "analytics")
    assert names() == ["$Default", "spark_1"]

    # dpskit's own calls make the same requests.
    hub = cloud.hub("groups-hub")
    hub.create_consumer_group("stream-analytics")
    assert names() == hub.consumer_groups() == ["$Default", "spark_1", "stream-analytics"]
    hub.delete_consumer_group("spark_1")
    assert hub.consumer_groups() == ["$Default", "stream-analytics"]
    with pytest.raises(dpskit.ConfigError):
        hub.create_consumer_group("has space")
    with pytest.raises(dpskit.DpsKitError):
        hub.delete_consumer_group("$Default")


def test_dpskit_sets_partitions_and_names_the_endpoint_as_the_portal_does(
    cloud: dpskit.LocalCloud, client: IotHubClient
) -> None:
    hub = cloud.create_hub("dpskit-parts", partition_count=6)
    assert hub.partition_count == 6
    assert cloud.hub("dpskit-parts").partition_count == 6
    assert hub.event_hub_endpoint == f"sb://{hub.host_name}/"
    service = client.iot_hub_resource.get_keys_for_key_name(GROUP, "dpskit-parts", "service")
    assert hub.event_hub_connection_string == (
        f"Endpoint=sb://{hub.host_name}/;SharedAccessKeyName=service;"
        f"SharedAccessKey={service.primary_key};EntityPath=dpskit-parts"
    )
    # Refused before any request, by the same rule ARM applies.
    for bad in (1, 129):
        with pytest.raises(dpskit.ConfigError, match="partitions"):
            cloud.create_hub(f"dpskit-bad-{bad}", partition_count=bad)
    assert {h.name for h in cloud.hubs()} == {"dpskit-parts"}
