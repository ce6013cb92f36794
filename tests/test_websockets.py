"""dpskit's own device clients over MQTT over WebSockets and through an HTTP CONNECT proxy,
against the local cloud's web port; the fallback when the web port cannot be bound.

The proxy is a small real one (asyncio, on 127.0.0.1) that records what it tunnelled: a
proxy the clients did not use cannot pass these tests.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpskit
from dpskit import Transport


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 in a thread of its own; ``targets`` lists every
    ``host:port`` it tunnelled to, ``refuse`` makes it answer 407 instead."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.authorizations: list[str | None] = []
        self.refuse = False
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._tunnel, "127.0.0.1", 0))
        self.port: int = server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        target = lines[0].split(" ")[1]
        authorization = next(
            (
                line.split(":", 1)[1].strip()
                for line in lines
                if line.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        self.targets.append(target)
        self.authorizations.append(authorization)
        if self.refuse:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    running = ConnectProxy()
    yield running
    running.close()


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    # A free web port: these tests need no 443, only what the emulator serves on its web port.
    with dpskit.LocalCloud(port=0, web_port=0) as cloud:
        dps = cloud.create_dps("ws-dps")
        cloud.link_hub(dps, cloud.create_hub("ws-hub"))
        yield cloud


@pytest.fixture(scope="module")
def authority(cloud: dpskit.LocalCloud) -> dpskit.CertificateAuthority:
    root = dpskit.CertificateAuthority.create_root("WebSockets Root")
    dps = cloud.dps("ws-dps")
    dps.prove_possession("ws-root", root)
    dps.create_enrollment_group("ws-devices", ca_reference="ws-root")
    return root


async def _provision_and_send(
    cloud: dpskit.LocalCloud,
    device: dpskit.DeviceCertificate,
    endpoint: str,
    transport: Transport,
    proxy: str | None = None,
) -> dpskit.RegistrationResult:
    dps = cloud.dps("ws-dps")
    result = await dpskit.provision(
        endpoint,
        id_scope=dps.id_scope,
        certificate=device,
        trust=cloud.trust_pem,
        transport=transport,
        proxy=proxy,
    )
    assert result.status == "assigned"
    async with dpskit.HubClient.connect(
        result, certificate=device, trust=cloud.trust_pem
    ) as client:
        await client.send_telemetry({"via": transport})
        twin = await client.get_twin()
        assert twin["desired"]["$version"] == 1
    return result


def test_dpskit_devices_provision_and_send_over_websockets(
    cloud: dpskit.LocalCloud, authority: dpskit.CertificateAuthority
) -> None:
    dps = cloud.dps("ws-dps")
    assert dps.websocket_endpoint == f"{dps.device_host}:{cloud.web_port}"
    device = authority.issue_device("ws-dev-1")
    result = asyncio.run(
        _provision_and_send(cloud, device, dps.websocket_endpoint, transport="websockets")
    )
    # The registration remembers its way; the hub client went the same way.
    assert (result.transport, result.port) == ("websockets", cloud.web_port)
    hub = next(h for h in cloud.hubs() if h.host_name == result.assigned_hub)
    [message] = hub.telemetry("ws-dev-1")
    assert message.json() == {"via": "websockets"}


def test_a_proxy_tunnels_both_transports(
    cloud: dpskit.LocalCloud, authority: dpskit.CertificateAuthority, proxy: ConnectProxy
) -> None:
    dps = cloud.dps("ws-dps")
    ways: list[tuple[str, str, Transport]] = [
        ("proxied-ws", dps.websocket_endpoint, "websockets"),
        ("proxied-tls", dps.device_endpoint, "mqtt"),
    ]
    for device_id, endpoint, transport in ways:
        device = authority.issue_device(device_id)
        result = asyncio.run(
            _provision_and_send(cloud, device, endpoint, transport=transport, proxy=proxy.url)
        )
        hub = next(h for h in cloud.hubs() if h.host_name == result.assigned_hub)
        assert [m.json() for m in hub.telemetry(device_id)] == [{"via": transport}]
        # The proxy URL may hold a password: the result's repr never shows it.
        assert proxy.url not in repr(result)
    web, mqtt = cloud.web_port, cloud.mqtt_port
    hubs = {h.host_name for h in cloud.hubs()}
    assert proxy.targets[0] == f"{dps.device_host}:{web}"
    assert proxy.targets[1].rsplit(":", 1) in [[h, str(web)] for h in hubs]
    assert proxy.targets[2] == f"{dps.device_host}:{mqtt}"
    assert proxy.targets[3].rsplit(":", 1) in [[h, str(mqtt)] for h in hubs]
    assert len(proxy.targets) == 4


def test_proxy_credentials_and_refusals(
    cloud: dpskit.LocalCloud, authority: dpskit.CertificateAuthority, proxy: ConnectProxy
) -> None:
    dps = cloud.dps("ws-dps")
    device = authority.issue_device("proxy-refused")
    proxy.refuse = True
    url = f"http://alice:s%40cret@127.0.0.1:{proxy.port}"
    with pytest.raises(dpskit.TransportError, match="407"):
        asyncio.run(
            dpskit.provision(
                dps.websocket_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=cloud.trust_pem,
                transport="websockets",
                proxy=url,
                timeout=5,
            )
        )
    # Basic credentials from the URL, percent-decoded.
    assert proxy.authorizations[0] == "Basic YWxpY2U6c0BjcmV0"
    for bad in ["socks5://127.0.0.1:1080", "http://127.0.0.1:notaport"]:
        with pytest.raises(dpskit.ConfigError, match="proxy"):
            asyncio.run(
                dpskit.provision(
                    dps.device_endpoint,
                    id_scope=dps.id_scope,
                    certificate=device,
                    trust=cloud.trust_pem,
                    proxy=bad,
                )
            )
    with pytest.raises(dpskit.ConfigError, match="transport"):
        asyncio.run(
            dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=device,
                trust=cloud.trust_pem,
                transport="amqp",  # type: ignore[arg-type]
            )
        )


def test_a_fleet_runs_over_websockets_through_a_proxy(
    cloud: dpskit.LocalCloud, authority: dpskit.CertificateAuthority, proxy: ConnectProxy
) -> None:
    fleet = dpskit.Fleet(
        cloud.dps("ws-dps"),
        authority=authority,
        count=6,
        prefix="ws-fleet-",
        telemetry=dpskit.TelemetryPlan(count=2, interval=0.01),
        transport="websockets",
        proxy=proxy.url,
    )
    report = fleet.run(progress=False)
    assert report.outcomes == {"completed": 6}, report.summary()
    assert report.messages_acknowledged == 12, report.summary()
    # Each device: DPS then its hub, all on the web port, all through the proxy.
    assert len(proxy.targets) == 12
    assert all(t.endswith(f":{cloud.web_port}") for t in proxy.targets)
    with pytest.raises(dpskit.ConfigError, match="transport"):
        dpskit.Fleet(cloud.dps("ws-dps"), authority=authority, count=1, transport="http")  # type: ignore[arg-type]


def test_the_web_port_falls_back_when_it_cannot_be_bound(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = pytest.importorskip("azure.iot.hub", reason="the official IoT Hub SDK is absent")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING), dpskit.LocalCloud(port=0, web_port=port) as cloud:
            assert cloud.web_port not in (port, 0)
            hub = cloud.create_hub("fallback-hub")
            assert f"HostName={hub.host_name}:{cloud.web_port};" in hub.connection_string
            # The official service SDK follows the connection string to the fallback port.
            trust = tmp_path / "trust.pem"
            trust.write_text(cloud.trust_pem)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(trust))
            manager = registry.IoTHubRegistryManager.from_connection_string(hub.connection_string)
            key = base64.b64encode(os.urandom(32)).decode()
            manager.create_device_with_sas("via-fallback", key, key, "enabled")
            assert hub.device("via-fallback").primary_key == key
    said = [r.getMessage() for r in caplog.records if "cannot listen on port" in r.getMessage()]
    assert len(said) == 1, said
    assert f"port {port}" in said[0]
    assert "HostName=host:" in said[0]
