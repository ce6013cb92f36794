"""``dpskit cloud`` and ``dpskit dps``: the walkthrough's management steps from a shell, on a
local cloud's folder (served for the length of a command, or by a running ``dpskit
emulator``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dpskit
from dpskit.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def test_the_whole_management_walkthrough_on_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "cloud")
    certs = tmp_path / "certs"
    _run(capsys, "certs", "root", "--dir", str(certs))
    _run(capsys, "certs", "intermediate", "--dir", str(certs))

    hub = json.loads(_run(capsys, "cloud", "create-hub", "hub-1", "--local", state, "--json"))
    assert hub["name"] == "hub-1"
    assert (hub["sku"], hub["units"]) == ("S1", 1)
    sized = json.loads(
        _run(
            capsys,
            "cloud",
            "create-hub",
            "hub-sized",
            "--sku",
            "S2",
            "--units",
            "2",
            "--local",
            state,
            "--json",
        )
    )
    assert (sized["sku"], sized["units"]) == ("S2", 2)
    dps = json.loads(_run(capsys, "cloud", "create-dps", "dps-1", "--local", state, "--json"))
    assert dps["idScope"].startswith("0ne")
    out = _run(capsys, "cloud", "link-hub", "dps-1", "hub-1", "--weight", "2", "--local", state)
    assert "weight 2" in out
    shown = json.loads(_run(capsys, "cloud", "show", "--local", state, "--json"))
    assert shown["dps"][0]["linkedHubs"] == [hub["hostName"]]

    # Proof of possession in one go, then a group on the verified root.
    verified = _run(capsys, "dps", "verify-ca", "dps-1", "--dir", str(certs), "--local", state)
    assert "verified True" in verified
    group = json.loads(
        _run(
            capsys,
            "dps",
            "enrollment-group",
            "create",
            "dps-1",
            "sensors",
            "--ca",
            "root",
            "--local",
            state,
            "--json",
        )
    )
    assert group["attestation"] == {"caReference": "root"}
    listed = _run(capsys, "dps", "enrollment-group", "list", "dps-1", "--local", state)
    assert "sensors" in listed

    # A device provisions through it (the state persisted between commands), and shows up.
    device = dpskit.CertificateAuthority.load(
        certs / "intermediate.fullchain.pem", certs / "intermediate.key.pem"
    ).issue_device("cli-device-1")
    with dpskit.LocalCloud(state, port=0) as cloud:
        [outcome] = dpskit.provision_devices(cloud.dps("dps-1"), [device])
        assert outcome.ok, outcome.error
    records = json.loads(_run(capsys, "dps", "registrations", "dps-1", "--local", state, "--json"))
    assert [(r["registrationId"], r["status"]) for r in records] == [("cli-device-1", "assigned")]

    _run(capsys, "dps", "enrollment-group", "delete", "dps-1", "sensors", "--local", state)
    assert "no enrollment groups" in _run(
        capsys, "dps", "enrollment-group", "list", "dps-1", "--local", state
    )


def test_commands_use_a_running_emulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "served"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "dpskit", "emulator", "--data-dir", str(state), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while dpskit.LocalCloud.attach(state) is None:
            assert emulator.poll() is None, emulator.stderr.read() if emulator.stderr else ""
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        out = _run(capsys, "cloud", "create-hub", "live-hub", "--local", str(state))
        assert "live-hub" in out
        # The running emulator holds it: no second emulator was started on the folder.
        attached = dpskit.LocalCloud.attach(state)
        assert attached is not None
        assert [h.name for h in attached.hubs()] == ["live-hub"]
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=30)
    assert dpskit.LocalCloud.attach(state) is None, "a clean stop removes the endpoints file"


def test_bad_target_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["cloud", "show", "--azure", "--local", "x"]) == 1
    assert "--local or --azure" in capsys.readouterr().err
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    monkeypatch.delenv("AZURE_RESOURCE_GROUP", raising=False)
    assert main(["cloud", "show", "--azure"]) == 1
    assert "AZURE_SUBSCRIPTION_ID" in capsys.readouterr().err
    assert main(["dps", "enrollment-group", "create", "d", "g", "--local", "unused"]) == 1
    assert "exactly one of" in capsys.readouterr().err


def test_names_azure_refuses_are_refused_with_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "cloud")
    assert main(["cloud", "create-hub", "my_hub", "--local", state]) != 0
    assert "Azure accepts 3-50 ASCII letters, digits and hyphens" in capsys.readouterr().err
    assert main(["cloud", "create-dps", "my.dps", "--local", state]) != 0
    assert "Azure accepts 3-64 ASCII letters, digits and hyphens" in capsys.readouterr().err
    shown = json.loads(_run(capsys, "cloud", "show", "--local", state, "--json"))
    assert (shown["hubs"], shown["dps"]) == ([], [])


def test_device_provision_and_run_against_a_running_emulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "served"
    certs = tmp_path / "certs"
    _run(capsys, "certs", "root", "--dir", str(certs))
    _run(capsys, "certs", "intermediate", "--dir", str(certs))
    _run(capsys, "certs", "device", "cli-dev-7", "--dir", str(certs))
    emulator = subprocess.Popen(
        [sys.executable, "-m", "dpskit", "emulator", "--data-dir", str(state), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while dpskit.LocalCloud.attach(state) is None:
            assert emulator.poll() is None, emulator.stderr.read() if emulator.stderr else ""
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        local = ["--local", str(state)]
        _run(capsys, "cloud", "create-hub", "cli-hub", *local)
        _run(capsys, "cloud", "create-dps", "cli-dps", *local)
        _run(capsys, "cloud", "link-hub", "cli-dps", "cli-hub", *local)
        _run(capsys, "dps", "verify-ca", "cli-dps", "--dir", str(certs), *local)
        _run(capsys, "dps", "enrollment-group", "create", "cli-dps", "g", "--ca", "root", *local)
        devices = str(certs / "devices")
        result = json.loads(
            _run(capsys, "device", "provision", "cli-dev-7", "--certs", devices, "--json", *local)
        )
        assert (result["status"], result["deviceId"]) == ("assigned", "cli-dev-7")
        out = _run(
            capsys,
            "device",
            "run",
            "cli-dev-7",
            "--certs",
            devices,
            "--count",
            "3",
            "--interval",
            "0.05",
            *local,
        )
        assert "3 messages acknowledged" in out
        # The same device over MQTT over WebSockets, on the emulator's web port.
        out = _run(
            capsys,
            "device",
            "run",
            "cli-dev-7",
            "--certs",
            devices,
            "--websockets",
            "--count",
            "2",
            "--interval",
            "0.05",
            *local,
        )
        assert "2 messages acknowledged" in out
        attached = dpskit.LocalCloud.attach(state)
        assert attached is not None
        assert len(attached.hub("cli-hub").telemetry("cli-dev-7")) == 5
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=30)


def _held_open(connection: socket.socket) -> bool:
    """Whether the emulator keeps ``connection`` open (it waits for a TLS ClientHello that never
    comes, for its connect timeout of 10 s) rather than closing it on arrival."""
    connection.settimeout(0.5)
    try:
        return connection.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def test_the_emulator_refuses_device_connections_past_max_connections(tmp_path: Path) -> None:
    state = tmp_path / "limited"
    emulator = subprocess.Popen(
        [
            *(sys.executable, "-m", "dpskit", "emulator", "--data-dir", str(state), "--port", "0"),
            *("--max-connections", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    opened: list[socket.socket] = []

    def connect() -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(connection)
        return connection

    try:
        deadline = time.monotonic() + 30
        while dpskit.LocalCloud.attach(state) is None:
            assert emulator.poll() is None, "the emulator exited"
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        port = json.loads((state / "endpoints.json").read_text())["mqttPort"]
        assert emulator.stdout is not None
        banner = next(line for line in emulator.stdout if line.lstrip().startswith("mqtt"))
        assert "up to 2 device connections at once" in banner, banner
        # A slot is taken on accept, before TLS: two bare TCP connections fill the limit.
        first, second = connect(), connect()
        assert _held_open(first)
        assert _held_open(second)
        assert not _held_open(connect()), "a third connection was kept past --max-connections 2"
        # A slot freed is a slot given again (the limit, not a broken listener).
        first.close()
        deadline = time.monotonic() + 10
        while not _held_open(connect()):
            assert time.monotonic() < deadline, "the freed slot was never given again"
            time.sleep(0.1)
    finally:
        for connection in opened:
            connection.close()
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=30)


def test_max_connections_must_be_a_positive_integer(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-5", "many"):
        assert main(["emulator", "--max-connections", bad]) == 2
        assert "--max-connections" in capsys.readouterr().err


def test_the_emulator_takes_its_arm_token_from_the_environment_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "guarded"
    secret = "token-from-the-environment"
    emulator = subprocess.Popen(
        [
            *(sys.executable, "-m", "dpskit", "emulator", "--data-dir", str(state), "--port", "0"),
            *("--arm-token-env", "DPSKIT_TEST_ARM_TOKEN"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DPSKIT_TEST_ARM_TOKEN": secret},
    )
    try:
        deadline = time.monotonic() + 30
        while dpskit.LocalCloud.attach(state) is None:
            assert emulator.poll() is None, emulator.stderr.read() if emulator.stderr else ""
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        endpoints = state / "endpoints.json"
        # The file holds the token: its owner alone may read it.
        assert stat.S_IMODE(endpoints.stat().st_mode) == 0o600
        assert json.loads(endpoints.read_text())["armToken"] == secret
        # The CLI finds the token through the file; a stranger's guess is refused.
        assert "locked-hub" in _run(
            capsys, "cloud", "create-hub", "locked-hub", "--local", str(state)
        )
        attached = dpskit.LocalCloud.attach(state)
        assert attached is not None
        stranger = dpskit.AzureCloud(
            attached.subscription_id,
            attached.resource_group,
            "dpskit-local",
            arm_endpoint=attached.arm_endpoint,
            trust_pem=attached.trust_pem,
        )
        with pytest.raises(dpskit.AuthenticationError):
            stranger.hubs()
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=30)
    # Never from an argument, and an unset variable is an error, not an open ARM.
    assert main(["emulator", "--data-dir", str(state), "--arm-token-env", "DPSKIT_UNSET_VAR"]) == 1
    assert "DPSKIT_UNSET_VAR" in capsys.readouterr().err


def test_the_cloud_flag_picks_a_sovereign_cloud(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from dpskit.cli.device import _target
    from dpskit.cli.targets import add_azure_options, azure_cloud

    monkeypatch.setenv("DPSKIT_TEST_TOKEN", "any")
    parser = argparse.ArgumentParser()
    add_azure_options(parser)
    place = ["--subscription", "s", "--resource-group", "g", "--token-env", "DPSKIT_TEST_TOKEN"]
    gov = azure_cloud(parser.parse_args([*place, "--cloud", "AzureUSGovernment"]))
    assert (gov.arm_endpoint, gov.token_scope) == (
        "https://management.usgovcloudapi.net",
        "https://management.usgovcloudapi.net/.default",
    )
    # The whole command, against the emulator's ARM standing in for China's.
    with dpskit.LocalCloud(port=0) as cloud:
        cloud.create_hub("china-hub")
        trust = tmp_path / "trust.pem"
        trust.write_text(cloud.trust_pem)
        argv = ["cloud", "show", "--azure", "--json", "--trust-file", str(trust)]
        argv += ["--subscription", cloud.subscription_id, "--resource-group", cloud.resource_group]
        argv += ["--token-env", "DPSKIT_TEST_TOKEN", "--arm-endpoint", cloud.arm_endpoint]
        shown = json.loads(_run(capsys, *argv, "--cloud", "AzureChinaCloud"))
        assert "china-hub" in json.dumps(shown)
    assert main([*argv, "--cloud", "AzureMoonCloud"]) == 1
    assert "AzureMoonCloud" in capsys.readouterr().err
    # `dpskit device` takes the DPS endpoint of the cloud.
    device = argparse.Namespace(id_scope="0cn00000001", endpoint=None, cloud="AzureChinaCloud")
    assert _target(device)[0] == "global.azure-devices-provisioning.cn"
    device.cloud = None
    monkeypatch.delenv("AZURE_CLOUD", raising=False)
    assert _target(device)[0] == "global.azure-devices-provisioning.net"
