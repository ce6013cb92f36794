"""Shared fixtures: the OpenSSL command line (our judge), a session-wide EC test PKI, and the
helpers the official-SDK peer tests share (a free-port probe, the emulator's ARM credential)."""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit


class LocalToken:
    """A TokenCredential for the emulator's ARM, which accepts any bearer token on loopback
    (the official management SDKs take one)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("local-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("local-token", int(time.time()) + 3600)


class AzureAtLocalCloud(dpskit.AzureCloud):
    """The Azure path pointed at a local cloud: its ARM, trust, and AMQP port (Azure's is
    5671, which another process may hold here). Everything else is AzureCloud's own code."""

    def __init__(self, cloud: dpskit.LocalCloud) -> None:
        super().__init__(
            cloud.subscription_id,
            cloud.resource_group,
            "any-token",
            arm_endpoint=cloud.arm_endpoint,
            trust_pem=cloud.trust_pem,
        )
        self._local_amqp_port = cloud.amqp_port

    def _amqp_port(self) -> int | None:
        return self._local_amqp_port


@contextlib.contextmanager
def cloud_for_the_official_service_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dpskit.LocalCloud]:
    """A local cloud whose AMQP endpoint the official IoT Hub service SDK reaches:
    ``azure-iot-hub``'s uamqp sender always dials 5671 and trusts only certifi's bundle, so
    the cloud takes 5671 (the test is skipped where it cannot) and the bundle holds the
    emulator's CA for the test's duration."""
    pytest.importorskip("azure.iot.hub", reason="the official IoT Hub service SDK is not installed")
    import certifi

    if not port_is_free(5671):
        pytest.skip("port 5671 is taken; the official service SDK cannot dial another port")
    with dpskit.LocalCloud(port=0, web_port=0, amqp_port=5671) as cloud:
        if cloud.amqp_port != 5671:
            pytest.skip("port 5671 cannot be bound here")
        bundle = tmp_path / "emulator-ca.pem"
        bundle.write_text(cloud.trust_pem)
        monkeypatch.setattr(certifi, "where", lambda: str(bundle))
        yield cloud


def port_is_free(port: int) -> bool:
    """Whether a loopback port can be bound (the official SDKs always dial 8883: tests that
    need it skip when something else holds it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def execute_notebook(path: Path, workdir: Path, timeout: int) -> None:
    """Runs a notebook top to bottom in a fresh kernel, with ``workdir`` as its folder, and
    fails on any cell that raised."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}
    ).execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors


# Signatures of the callables the OpenSSL fixtures hand out (tests annotate with these shapes).
RunOpenSSL = Callable[..., subprocess.CompletedProcess[str]]
OpenSSLOutput = Callable[..., str]


@pytest.fixture(scope="session")
def openssl() -> str:
    """Return the path of the ``openssl`` binary, or skip the test when it is not installed."""
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command line tool is not installed")
    return path


def _run(
    openssl: str, args: tuple[str | Path, ...], stdin: str | None, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [openssl, *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def run_openssl(openssl: str) -> RunOpenSSL:
    """Return ``run(*args, stdin=None, cwd=None)``: runs openssl, returns the CompletedProcess.

    It does not check the exit status, for the tests that expect OpenSSL to refuse something.
    """

    def run(
        *args: str | Path, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run(openssl, args, stdin, cwd)

    return run


@pytest.fixture(scope="session")
def openssl_output(openssl: str) -> OpenSSLOutput:
    """Return ``out(*args, stdin=None, cwd=None)``: runs openssl, fails the test unless it exits
    with 0, and returns stdout followed by stderr (``openssl verify`` and ``pkcs12 -info`` split
    their report between the two)."""

    def out(*args: str | Path, stdin: str | None = None, cwd: Path | None = None) -> str:
        proc = _run(openssl, args, stdin, cwd)
        if proc.returncode != 0:
            command = " ".join(str(a) for a in args)
            pytest.fail(
                f"openssl {command} exited with {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc.stdout + proc.stderr

    return out


@pytest.fixture(scope="session")
def ec_root() -> dpskit.CertificateAuthority:
    """A P-256 root CA shared by the whole session (cheap, and read-only for the tests)."""
    return dpskit.CertificateAuthority.create_root("dpskit Test Root CA", organization="dpskit")


@pytest.fixture(scope="session")
def ec_intermediate(ec_root: dpskit.CertificateAuthority) -> dpskit.CertificateAuthority:
    """A P-256 intermediate CA (pathlen 0) under :func:`ec_root`."""
    return ec_root.create_intermediate("dpskit Test Intermediate CA", organization="dpskit")


@pytest.fixture(scope="session")
def ec_device(ec_intermediate: dpskit.CertificateAuthority) -> dpskit.DeviceCertificate:
    """A P-256 device certificate issued by :func:`ec_intermediate`."""
    return ec_intermediate.issue_device("test-device-01")


@pytest.fixture(scope="session")
def other_root() -> dpskit.CertificateAuthority:
    """An unrelated root CA, to play the wrong trust anchor."""
    return dpskit.CertificateAuthority.create_root("Unrelated Root CA")


def throttled(hub: dpskit.Hub) -> dict[str, int]:
    """The 429s a local hub's presets produced, by operation (the local cloud always counts
    them; only Azure leaves them None)."""
    counts = hub.usage().throttled
    assert counts is not None
    return counts


def quota_refusals(hub: dpskit.Hub) -> int:
    """The 403002 refusals of a local hub's daily quota."""
    refusals = hub.usage().quota_refusals
    assert refusals is not None
    return refusals


def sas_device(cloud: dpskit.LocalCloud, hub: dpskit.Hub, device_id: str) -> Any:
    """Creates a symmetric-key identity on ``hub`` (no DPS) and returns what connects it:
    ``async with connect() as client``."""
    identity = hub.create_device(device_id, symmetric_key=True)
    key = identity.primary_key
    assert key is not None

    def connect() -> Any:
        return dpskit.HubClient.connect(
            f"{hub.host_name}:{cloud.mqtt_port}",
            device_id=device_id,
            symmetric_key=key,
            trust=cloud.trust_pem,
        )

    return connect


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` passes (the official SDKs deliver on
    threads of their own); returns its last value."""
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        event.wait(0.05)
    return condition()


def granted(cloud: dpskit.LocalCloud, device_id: str, subscription: str) -> bool:
    """Whether the hub has granted ``subscription`` to the device: its SUBACK is traced once
    the subscription is in force (trace the device first)."""
    return any(
        e.kind == "SUBACK" and subscription in e.detail.split()
        for e in cloud.trace_events(device_id)
    )
