"""``_Cloud``: what the local and the Azure cloud share, one REST client (Rust) for ARM and
the service APIs, and the hubs, DPS instances and links made through it."""

from __future__ import annotations

from dpskit._native import Certificate, DpsRecord, Emulator, HubRecord, HubUsageRecord, RestClient
from dpskit.cloud._common import DEFAULT_MQTT_PORT, WEB_PORT
from dpskit.cloud.dps import Dps
from dpskit.cloud.hub import Hub
from dpskit.cloud.records import LinkedHub
from dpskit.cloud.registry import DeviceRegistryNamespace
from dpskit.errors import ConfigError


class _Cloud:
    """What LocalCloud and AzureCloud share: one REST client for ARM and the service APIs."""

    subscription_id: str
    resource_group: str

    @property
    def _rest(self) -> RestClient:
        raise NotImplementedError

    @property
    def trust_pem(self) -> str | None:
        """The CA devices and clients trust for this cloud's servers (``None``: the system
        roots, as for Azure)."""
        return None

    def _device_port(self) -> int:
        return DEFAULT_MQTT_PORT

    def _web_port(self) -> int:
        """The port of HTTPS and MQTT over WebSockets on each resource's address (Azure's 443)."""
        return WEB_PORT

    def _amqp_port(self) -> int | None:
        """The port of the hubs' Event Hub-compatible endpoint (``None``: Azure's 5671)."""
        return None

    def _emulator_only(self, feature: str) -> Emulator:
        raise ConfigError(f"{feature} is a feature of the local cloud (the emulator) only")

    #: Whether the emulator's own REST calls are served (the local cloud, in this process or
    #: another); Azure's equivalents go elsewhere (telemetry: the events endpoint).
    _has_emulator_api = False

    def _hub_usage(self, hub: Hub) -> HubUsageRecord:
        """A hub's usage as ARM reports it (its ``quotaMetrics``); the in-process emulator
        reads its own meters, throttle refusals included."""
        return self._rest.hub_usage(hub.name)

    def _registry_certificate(self, namespace: str, policy: str | None) -> Certificate | None:
        """A namespace's root CA (``policy`` None) or a policy's issuing CA, where this cloud
        can know it (ARM does not publish them: ``None``)."""
        return None

    # -- resources -------------------------------------------------------------------------

    def _hub(self, resource: HubRecord) -> Hub:
        _, key = self._rest.hub_keys(resource.name)
        return Hub(self, resource, key)

    def _dps(self, resource: DpsRecord) -> Dps:
        _, key = self._rest.dps_keys(resource.name)
        return Dps(self, resource, key)

    def create_hub(
        self,
        name: str,
        location: str = "westeurope",
        *,
        sku: str | None = None,
        units: int = 1,
        partition_count: int | None = None,
    ) -> Hub:
        """Create an IoT hub (or return the existing one of that name); waits until ARM reports
        it ready. The name must follow Azure's rule (3-50 letters, digits and hyphens, not
        ending with a hyphen): others raise ``ConfigError`` before any request.

        ``sku`` (``F1``, ``B1``-``B3``, ``S1``-``S3``) and ``units`` choose the hub's tier and
        size, as ARM's ``sku`` shows it; the local cloud then applies Azure's documented
        throttles and daily message quota of that tier and size (see :meth:`Hub.usage`).
        Without ``sku`` the hub is S1 with one unit and enforces none of them.

        ``partition_count`` (2-128; Azure's default 4) sets the partitions of the hub's built-in
        Event Hub-compatible endpoint, fixed once the hub exists: a device's events always land
        on the same one."""
        if units < 1:
            raise ConfigError(f"a hub has 1 unit or more, not {units}")
        if sku is None and units != 1:
            raise ConfigError("units need a sku (F1, B1, B2, B3, S1, S2 or S3)")
        return self._hub(self._rest.create_hub(name, location, sku, units, partition_count))

    def hub(self, name: str) -> Hub:
        """An existing hub."""
        return self._hub(self._rest.hub(name))

    def hubs(self) -> list[Hub]:
        """Every hub of the resource group."""
        return [self._hub(r) for r in self._rest.hubs()]

    def delete_hub(self, hub: Hub | str) -> None:
        """Delete a hub (and unlink it from every DPS)."""
        self._rest.delete_hub(hub.name if isinstance(hub, Hub) else hub)

    def create_dps(self, name: str, location: str = "westeurope", *, presets: bool = False) -> Dps:
        """Create a DPS instance (or return the existing one of that name). The name must
        follow Azure's rule (3-64 letters, digits and hyphens, not ending with a hyphen): others
        raise ``ConfigError`` before any request.

        With ``presets`` the local cloud applies Azure's DPS rates to the instance: 1,000
        registrations and 1,000 service operations a minute, 5 status polls per device in 10
        seconds, each refused past it with 429 and a ``retry-after`` (Azure always applies
        them; the resource tag that asks for them is inert there)."""
        return self._dps(self._rest.create_dps(name, location, presets))

    def dps(self, name: str) -> Dps:
        """An existing DPS instance."""
        return self._dps(self._rest.dps(name))

    def all_dps(self) -> list[Dps]:
        """Every DPS instance of the resource group."""
        return [self._dps(r) for r in self._rest.dps_instances()]

    def delete_dps(self, dps: Dps | str) -> None:
        """Delete a DPS instance with its enrollments and registrations."""
        self._rest.delete_dps(dps.name if isinstance(dps, Dps) else dps)

    def link_hub(
        self,
        dps: Dps | str,
        hub: Hub | str,
        *,
        allocation_weight: int = 1,
        apply_allocation_policy: bool = True,
        location: str | None = None,
    ) -> LinkedHub:
        """Link a hub to a DPS instance (or update the link), as ``az iot dps linked-hub create``
        does: read the DPS resource, add the hub's ``iothubowner`` connection string, write it
        back. ``location`` (default: the hub's) is what geo-latency allocation compares."""
        dps_name = dps.name if isinstance(dps, Dps) else dps
        hub_name = hub.name if isinstance(hub, Hub) else hub
        if allocation_weight < 0:
            raise ConfigError("allocation_weight must be 0 or more")
        resource = self._rest.link_hub(
            dps_name, hub_name, allocation_weight, apply_allocation_policy, location
        )
        host = self._rest.hub(hub_name).host_name.lower()
        link = next(k for k in resource.linked_hubs if k.host_name.lower() == host)
        return LinkedHub._from_native(link, hub_name)

    # -- Azure Device Registry ---------------------------------------------------------------

    def create_device_registry_namespace(
        self, name: str, location: str | None = None
    ) -> DeviceRegistryNamespace:
        """Create an Azure Device Registry namespace with certificate management on (or return
        the existing one); its root CA is made with it. ``location`` defaults to
        ``westeurope``. The name must follow ADR's rule (3-64 lower-case letters, digits and
        hyphens, starting and ending with a letter or digit): others raise ``ConfigError``
        before any request."""
        record = self._rest.create_device_registry_namespace(name, location or "westeurope")
        return DeviceRegistryNamespace(self, record)

    def device_registry_namespace(self, name: str) -> DeviceRegistryNamespace:
        """An existing Device Registry namespace."""
        return DeviceRegistryNamespace(self, self._rest.device_registry_namespace(name))

    def device_registry_namespaces(self) -> list[DeviceRegistryNamespace]:
        """Every Device Registry namespace of the resource group."""
        return [DeviceRegistryNamespace(self, r) for r in self._rest.device_registry_namespaces()]

    def delete_device_registry_namespace(self, namespace: DeviceRegistryNamespace | str) -> None:
        """Delete a namespace with its policies (linked DPS instances stop issuing, linked hubs
        stop trusting its CAs)."""
        name = namespace.name if isinstance(namespace, DeviceRegistryNamespace) else namespace
        self._rest.delete_device_registry_namespace(name)

    def link_namespace(self, target: Dps | Hub, namespace: DeviceRegistryNamespace | str) -> None:
        """Link a DPS (its enrollments may then name the namespace's policies) or a hub (it then
        trusts the namespace's issuing CAs) to a namespace, as the CLI's ``--ns-resource-id``
        does: the resource's Device Registry property is set by a PUT of the resource. A DPS or
        hub links to one namespace only (``ConflictError`` for a second)."""
        name = namespace.name if isinstance(namespace, DeviceRegistryNamespace) else namespace
        if isinstance(target, Dps):
            self._rest.link_namespace("dps", target.name, name)
        elif isinstance(target, Hub):
            self._rest.link_namespace("hub", target.name, name)
        else:
            raise ConfigError("link_namespace links a Dps or a Hub")
