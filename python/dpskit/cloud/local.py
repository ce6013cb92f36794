"""``LocalCloud`` (the embedded emulator, started in this process) and ``LocalCloudClient``
(one another process runs), the endpoints file that lets other processes find a running
one, and the process-level helpers they need (the open-file limit, is a process alive)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from dpskit._native import (
    EMULATOR_CA_FILE,
    Certificate,
    Emulator,
    HubUsageRecord,
    RestClient,
    _refresh_logging,
    write_secret,
)
from dpskit.cloud._common import DEFAULT_MQTT_PORT, WEB_PORT
from dpskit.cloud.base import _Cloud
from dpskit.cloud.hub import Hub
from dpskit.cloud.recording import RequestRecording
from dpskit.cloud.records import ThrottledRequests, TraceEvent
from dpskit.errors import ConfigError, EmulatorError

#: A running local cloud describes its endpoints in this file of its data folder.
ENDPOINTS_FILE = "endpoints.json"
#: The bearer token sent to the emulator when it requires none (it accepts any on loopback).
LOCAL_TOKEN = "dpskit-local"


#: macOS refuses a soft open-file limit above OPEN_MAX (10,240) even when the hard limit is
#: unlimited (setrlimit(2), "COMPATIBILITY"): the value tried when the first is refused.
_MACOS_OPEN_MAX = 10_240


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: every device connection is a file
    descriptor, and a soft limit of 1,024 (256 on macOS) would cap a local cloud or a fleet at
    about that many devices (servers such as nginx and mosquitto's packaging do the same at
    start). POSIX only: Windows has no such per-process limit on sockets."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY:
        return
    for wanted in (target, min(target, _MACOS_OPEN_MAX)):
        if wanted <= soft:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            # A sandbox may refuse, or macOS above OPEN_MAX: the next value is tried, and
            # past the last the emulator or fleet holds fewer devices.
            continue
        return


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (one of this user's, on POSIX)."""
    if sys.platform == "win32":
        # Not os.kill(pid, 0): on Windows any signal but the two console events is
        # TerminateProcess, which would stop the very emulator being looked for.
        import ctypes

        kernel32 = ctypes.windll.kernel32
        process_query_limited_information, still_active = 0x1000, 259
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and (
                code.value == still_active
            )
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _write_owner_only(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only: created 0600 (no window in which
    another user could open it), and tightened if an older copy was looser (the core's one
    rule for secret files)."""
    write_secret(path, text.encode())


class LocalCloud(_Cloud):
    """The embedded emulator of DPS and IoT Hub, started on construction, managed through the
    same REST client as Azure: ARM on :attr:`arm_endpoint`, the hub and DPS service APIs on port
    443 (or :attr:`web_port`) of each resource's own address, as Azure serves them.

    Use it as a context manager, or call :meth:`stop`. Without ``data_dir`` the state lives in a
    temporary folder deleted on stop; with one, everything (including the emulator's CA, so
    trusted clients keep working) survives restarts.

    ARM answers only for :attr:`subscription_id` and :attr:`resource_group`. On a loopback
    ``host`` it accepts any bearer token unless ``arm_tokens`` are given. On any other address
    (``host="0.0.0.0"``) the network could otherwise ask it for every owner key, so without
    ``arm_tokens`` a random token is generated: this object uses it, and it is written to
    :attr:`endpoints_file` (mode 0600) for other local processes such as ``dpskit cloud``.

    A client may present at most ``max_chain_length`` certificates (leaf included); a longer
    chain is refused (401002 on register, a refused CONNECT on a hub) before it is parsed.

    DPS answers a registration ``202 assigning`` with ``retry-after: poll_retry_after``. The
    default, 0, lets devices poll at once (an emulated assignment is ready then), so a fleet is
    limited by the machine's handshakes rather than by sleeps; ``poll_retry_after=3`` is what
    Azure's DPS sends, for clients that should wait as they will on Azure.

    Time as Azure spends it, so that a client's waiting, paging and retrying is exercised:
    ``arm_operation_seconds`` is how long ARM's hub and DPS creates, updates and deletes run
    (they always answer as Azure does, 201/202 with ``Azure-AsyncOperation``; the resource
    shows ``Activating`` or ``Deleting`` meanwhile and a name being deleted stays taken; 0, the
    default, finishes them at once). ARM's hub and DPS lists give ``arm_page_size`` items per
    page and a ``nextLink``. With ``throttle_every=N`` every Nth request of each REST API (ARM,
    DPS service, hub service) is answered 429 with ``Retry-After: throttle_retry_after``;
    :attr:`throttled_requests` counts them.

    Each resource's address also serves port ``web_port`` (443, as Azure does): the service
    APIs over HTTPS (so the official ``azure-iot-hub`` SDK reaches a hub at its host name) and
    MQTT over WebSockets on ``/$iothub/websocket`` for DPS and the hubs. Where 443 cannot be
    bound (an unprivileged process on Linux, or the port is taken) a free port is used
    instead, said once in the log; :attr:`web_port` tells which, and the hubs' service
    connection strings name it (``HostName=host:port``).

    Each hub's address also serves AMQP over TLS on ``amqp_port`` (5671, as Azure does): the
    hub's built-in Event Hub-compatible endpoint, where ``azure-eventhub`` reads its telemetry.
    Where 5671 cannot be bound a free port is used instead, said once in the log;
    :attr:`amqp_port` tells which.

    The cloud keeps its own clock: ``clock`` (an aware ``datetime``) starts it elsewhere in time
    for a new ``data_dir`` (a kept folder only moves forward), and :meth:`advance_time` moves it
    on, so certificates expire and renew in seconds; :meth:`now` tells where it stands.
    """

    subscription_id = "00000000-0000-0000-0000-000000000000"
    resource_group = "dpskit-local"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        connect_timeout: float = 10.0,
        max_connections: int = 20_000,
        max_packet_size: int = 262_144,
        max_chain_length: int = 10,
        poll_retry_after: int = 0,
        https_port: int = 0,
        web_port: int = WEB_PORT,
        amqp_port: int = 5671,
        arm_tokens: Sequence[str] | None = None,
        arm_operation_seconds: float = 0.0,
        arm_page_size: int = 100,
        throttle_every: int = 0,
        throttle_retry_after: int = 1,
        clock: datetime | None = None,
    ) -> None:
        if clock is not None and clock.tzinfo is None:
            raise ConfigError("clock must be an aware datetime (give it a tzinfo, e.g. UTC)")
        # Log lines of the emulator follow the `logging` configuration current at start.
        _refresh_logging()
        _raise_open_file_limit()
        self._emulator = Emulator(
            data_dir,
            host=host,
            port=port,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            max_packet_size=max_packet_size,
            max_chain_length=max_chain_length,
            poll_retry_after=poll_retry_after,
            https_port=https_port,
            web_port=web_port,
            amqp_port=amqp_port,
            arm_tokens=list(arm_tokens) if arm_tokens is not None else None,
            arm_operation_seconds=arm_operation_seconds,
            arm_page_size=arm_page_size,
            throttle_every=throttle_every,
            throttle_retry_after=throttle_retry_after,
            start_time=int(clock.timestamp()) if clock is not None else None,
        )
        # On loopback without arm_tokens ARM accepts any bearer token; off loopback the emulator
        # generates one when none is configured, and only the configured or generated one works.
        token = self._emulator.arm_token or LOCAL_TOKEN
        self._rest_client = RestClient(
            self.arm_endpoint,
            self.subscription_id,
            self.resource_group,
            lambda: token,
            self.trust_pem,
        )
        # Other processes (the CLI, a notebook) find a running emulator through this file; a
        # generated token is only reachable through it, so it is written then even for a
        # temporary folder.
        self._endpoints_file: Path | None = None
        if data_dir is not None or self._emulator.arm_token is not None:
            self._endpoints_file = self.data_dir / ENDPOINTS_FILE
            endpoints: dict[str, Any] = {
                "pid": os.getpid(),
                "armEndpoint": self.arm_endpoint,
                "mqttHost": self.host,
                "mqttPort": self.mqtt_port,
                "webPort": self.web_port,
                "amqpPort": self.amqp_port,
            }
            if self._emulator.arm_token is not None:
                endpoints["armToken"] = self._emulator.arm_token
            _write_owner_only(self._endpoints_file, json.dumps(endpoints))

    @property
    def arm_token(self) -> str | None:
        """The bearer token ARM requires (configured, or generated off loopback); ``None`` when
        it accepts any (loopback without ``arm_tokens``)."""
        return self._emulator.arm_token

    @property
    def throttled_requests(self) -> ThrottledRequests:
        """The 429s answered so far under ``throttle_every``, per REST API."""
        arm, dps_service, hub_service = self._emulator.throttled_requests
        return ThrottledRequests(arm=arm, dps_service=dps_service, hub_service=hub_service)

    @property
    def endpoints_file(self) -> Path | None:
        """The file describing this running cloud to other processes (owner-only, 0600: it
        holds the ARM bearer token when one is required), or ``None`` when none is written."""
        return self._endpoints_file

    @classmethod
    def start(
        cls,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        **options: Any,
    ) -> LocalCloud:
        """Start a local cloud (same as the constructor)."""
        return cls(data_dir, host=host, port=port, **options)

    def stop(self) -> None:
        """Stop serving; state stays in ``data_dir`` unless it is temporary."""
        self._emulator.stop()
        if self._endpoints_file is not None:
            self._endpoints_file.unlink(missing_ok=True)
            self._endpoints_file = None

    @classmethod
    def attach(cls, data_dir: str | Path) -> LocalCloudClient | None:
        """A client of the local cloud another process runs on ``data_dir`` (``dpskit
        emulator``), or ``None`` when none runs there."""
        return LocalCloudClient.find(Path(data_dir))

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _rest(self) -> RestClient:
        if not self._emulator.is_running:
            raise EmulatorError("the local cloud is stopped")
        return self._rest_client

    def _device_port(self) -> int:
        return self.mqtt_port

    def _web_port(self) -> int:
        return self.web_port

    def _amqp_port(self) -> int | None:
        return self.amqp_port

    def _emulator_only(self, feature: str) -> Emulator:
        return self._emulator

    def _registry_certificate(self, namespace: str, policy: str | None) -> Certificate | None:
        pem = (
            self._emulator.namespace_root_pem(namespace)
            if policy is None
            else self._emulator.policy_issuing_pem(namespace, policy)
        )
        return Certificate.from_pem(pem)

    def now(self) -> datetime:
        """The cloud's now (UTC): the wall clock plus every :meth:`advance_time`."""
        return datetime.fromtimestamp(self._emulator.now_ms() / 1000, tz=timezone.utc)

    def advance_time(
        self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0
    ) -> datetime:
        """Move the cloud's clock forward (kept in its data folder): certificates expire, SAS
        tokens run out and pending operations lapse as if that much time had passed. Returns
        the new now. Time only moves forward (``ConfigError`` otherwise)."""
        total = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if total < timedelta(0):
            raise ConfigError("the cloud's clock only moves forward")
        now_ms = self._emulator.advance_time(int(total.total_seconds()))
        return datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)

    def _hub_usage(self, hub: Hub) -> HubUsageRecord:
        return self._emulator.hub_usage(hub.host_name)

    _has_emulator_api = True

    @property
    def is_running(self) -> bool:
        """Whether the emulator is serving."""
        return self._emulator.is_running

    @property
    def trust_pem(self) -> str:
        """The emulator CA's certificate: what clients trust (the official SDK's
        ``server_verification_cert``)."""
        return self._emulator.trust_pem

    @property
    def data_dir(self) -> Path:
        """The folder holding the state and the emulator's CA."""
        return Path(self._emulator.data_dir)

    @property
    def host(self) -> str:
        """The address DPS listens on (hubs take the following loopback addresses, or where
        those cannot be bound, as on macOS, this address and then ``localhost``)."""
        return self._emulator.host

    @property
    def mqtt_port(self) -> int:
        """The MQTT-over-TLS port shared by DPS and every hub."""
        return self._emulator.mqtt_port

    @property
    def https_port(self) -> int:
        """The HTTPS port of the management (ARM) and service REST APIs."""
        return self._emulator.https_port

    @property
    def web_port(self) -> int:
        """The port of HTTPS and MQTT over WebSockets on each resource's address: 443, or the
        free port used because 443 could not be bound."""
        return self._emulator.web_port

    @property
    def amqp_port(self) -> int:
        """The port of AMQP over TLS on each hub's address (the Event Hub-compatible
        endpoint): 5671, or the free port used because 5671 could not be bound."""
        return self._emulator.amqp_port

    @property
    def arm_endpoint(self) -> str:
        """The management (Azure Resource Manager) endpoint: give it to ARM clients as their
        base URL, with :attr:`trust_pem` as the CA they verify it with, for
        :attr:`subscription_id` and :attr:`resource_group`. On loopback the emulator accepts
        any bearer token unless ``arm_tokens`` were given; elsewhere only :attr:`arm_token`."""
        return f"https://{self.host}:{self.https_port}"

    # -- resources only the emulator has -------------------------------------------------------

    def create_hub(
        self,
        name: str,
        location: str = "westeurope",
        *,
        sku: str | None = None,
        units: int = 1,
        partition_count: int | None = None,
        host_name: str | None = None,
    ) -> Hub:
        """Create an IoT hub; it gets the next free loopback address as its host name (or
        ``host_name``, which must then resolve to this machine and be a loopback address or a
        name under ``localhost``: the emulator's CA is name-constrained to those).

        Where that address cannot be bound (macOS has only 127.0.0.1 without setup), the hub
        takes the first free name that reaches 127.0.0.1 everywhere: :attr:`host`, then
        ``localhost``; past those :class:`~dpskit.errors.ConfigError` says what to run to add
        an address (``dpskit emulator --print-loopback-setup N`` prints it for N hubs).
        ``DPSKIT_SHARED_HUB_ADDRESSES=1`` in the environment makes hubs take those names
        everywhere (tests)."""
        if host_name is not None:
            self._emulator.create_hub(name, location, host_name, partition_count)
        return super().create_hub(
            name, location, sku=sku, units=units, partition_count=partition_count
        )

    # -- traces ----------------------------------------------------------------------------

    def trace(self, client_id: str | None = None, *, enabled: bool = True) -> None:
        """Record the MQTT exchange of one client id (a registration or device id), or of every
        client with ``None``."""
        self._emulator.trace(client_id, enabled)

    def trace_events(self, client_id: str) -> list[TraceEvent]:
        """The recorded exchange of a client."""
        return [TraceEvent._from_native(e) for e in self._emulator.trace_events(client_id)]

    def format_trace(self, client_id: str) -> str:
        """The recorded exchange of a client as readable text."""
        return "\n".join(str(e) for e in self.trace_events(client_id))

    def record_requests(self) -> RequestRecording:
        """Record the HTTPS requests this local cloud serves (ARM, DPS and hub service APIs)
        while the returned context manager is open: method, path, query, the headers that shape
        a request and its JSON body, secrets left out. Useful to see exactly what a client (dpskit,
        an official SDK, your own code) sends before it sends it to Azure::

            with cloud.record_requests() as recording:
                dps.create_enrollment_group("sensors", ca_reference="root")
            for request in recording.requests:
                print(request, request.body)
        """
        return RequestRecording(self._emulator)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = f"{self.host}:{self.mqtt_port}"
        return f"<LocalCloud {state} mqtt={where} data_dir={str(self.data_dir)!r}>"


class LocalCloudClient(_Cloud):
    """A client of a local cloud that another process runs (``dpskit emulator --data-dir``):
    the same REST API, without the in-process knobs."""

    subscription_id = LocalCloud.subscription_id
    resource_group = LocalCloud.resource_group

    def __init__(self, data_dir: Path, endpoints: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.arm_endpoint: str = endpoints["armEndpoint"]
        self._mqtt_port: int = endpoints["mqttPort"]
        self._web_port_number: int = endpoints.get("webPort", WEB_PORT)
        # Written by local clouds that serve the events endpoint; older files: Azure's port.
        self._amqp_port_number: int | None = endpoints.get("amqpPort")
        self._trust_pem = (data_dir / EMULATOR_CA_FILE).read_text()
        token: str = endpoints.get("armToken") or LOCAL_TOKEN
        self._rest_client = RestClient(
            self.arm_endpoint,
            self.subscription_id,
            self.resource_group,
            lambda: token,
            self._trust_pem,
        )

    @classmethod
    def find(cls, data_dir: Path) -> LocalCloudClient | None:
        """The running local cloud of ``data_dir``, if its process is alive."""
        try:
            endpoints = json.loads((data_dir / ENDPOINTS_FILE).read_text())
            alive = _process_alive(int(endpoints["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(data_dir, endpoints) if alive else None

    @property
    def _rest(self) -> RestClient:
        return self._rest_client

    @property
    def trust_pem(self) -> str:
        """The emulator's CA."""
        return self._trust_pem

    def _device_port(self) -> int:
        return self._mqtt_port

    def _web_port(self) -> int:
        return self._web_port_number

    def _amqp_port(self) -> int | None:
        return self._amqp_port_number

    _has_emulator_api = True

    def __repr__(self) -> str:
        return f"<LocalCloudClient arm={self.arm_endpoint!r} data_dir={str(self.data_dir)!r}>"
