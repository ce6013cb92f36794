"""Hostile input closes that one connection with a log line; the emulator keeps serving. And
the standalone ``dpskit emulator`` command starts and stops cleanly."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dpskit


def _closed_by_peer(sock: socket.socket | ssl.SSLSocket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    except TimeoutError:
        return False
    return True


def test_garbage_and_silence_close_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dpskit")
    with dpskit.LocalCloud(port=0, connect_timeout=0.5, poll_retry_after=0) as cloud:
        dps = cloud.create_dps("dps")
        cloud.link_hub(dps, cloud.create_hub("hub"))
        root = dpskit.CertificateAuthority.create_root("Robustness Root")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("group", ca_reference="root")
        address = (cloud.host, cloud.mqtt_port)

        rng = random.Random(7)
        for _ in range(20):
            with socket.create_connection(address) as raw:
                raw.sendall(rng.randbytes(rng.randint(1, 600)))
                assert _closed_by_peer(raw)
        with socket.create_connection(address) as silent:
            assert _closed_by_peer(silent), "a client that never speaks is dropped"

        context = ssl.create_default_context(cadata=cloud.trust_pem)
        hostile = [
            b"\x30\x7f",  # PUBLISH before CONNECT with a lying length
            b"\xe0\x00",  # DISCONNECT before CONNECT
            b"\x10\xff\xff\xff\xff\x7f",  # remaining length beyond the MQTT maximum
            bytes(rng.randbytes(2000)),
        ]
        for payload in hostile:
            with (
                socket.create_connection(address) as tcp,
                context.wrap_socket(tcp, server_hostname=cloud.host) as tls,
            ):
                tls.sendall(payload)
                assert _closed_by_peer(tls)

        [outcome] = dpskit.provision_devices(dps, [root.issue_device("still-served")])
        assert outcome.ok, outcome.error
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dpskit")]
    assert any("TLS handshake failed" in m for m in messages), messages
    assert any("no CONNECT within the connect timeout" in m for m in messages), messages


def test_the_emulator_command_runs_until_interrupted(tmp_path: Path) -> None:
    data = tmp_path / "cloud"
    process = subprocess.Popen(
        [sys.executable, "-m", "dpskit", "emulator", "--data-dir", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert any("mqtt:" in line for line in lines), lines
        assert (data / "emulator-ca.cert.pem").exists()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out
    assert (data / "state.sqlite3").exists(), "state stays in the folder"


def test_a_chain_longer_than_the_limit_is_refused_before_anything_else() -> None:
    with dpskit.LocalCloud(port=0, poll_retry_after=0, max_chain_length=1) as cloud:
        dps = cloud.create_dps("dps")
        cloud.link_hub(dps, cloud.create_hub("hub"))
        root = dpskit.CertificateAuthority.create_root("Chain Limit Root")
        inter = root.create_intermediate("Chain Limit Intermediate")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("group", ca_reference="root")
        endpoint, scope, trust = dps.device_endpoint, dps.id_scope, cloud.trust_pem
        # Leaf + intermediate: two certificates, one more than this emulator accepts.
        with pytest.raises(dpskit.RegistrationFailedError) as refused:
            dpskit.provision_sync(
                endpoint, id_scope=scope, certificate=inter.issue_device("long-1"), trust=trust
            )
        assert refused.value.status == 401
        assert "at most 1" in str(refused.value)
        # A device the root issued sends its leaf alone and is assigned.
        result = dpskit.provision_sync(
            endpoint, id_scope=scope, certificate=root.issue_device("short-1"), trust=trust
        )
        assert result.assigned_hub is not None
