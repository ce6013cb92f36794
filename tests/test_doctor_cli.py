"""``dpskit doctor device`` against a real local cloud folder: a healthy device exits 0 with a
table, an expired one exits 1 with its problem row first and ``--json`` naming the cause, a
PKCS#12 file opens with ``--password-env`` (the password never printed); plus the Python
API's report (lookups, dict, repr) and its refusals of contradictory inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dpskit
from dpskit.cli import main
from dpskit.doctor import CAUSES


@dataclass
class World:
    folder: Path
    cloud: dpskit.LocalCloud
    dps: dpskit.Dps
    intermediate: dpskit.CertificateAuthority
    trust_bundle: Path
    devices: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A local cloud folder with one DPS linked to one hub, a verified root and an enrollment
    group on it, and an intermediate CA that issues the devices."""
    folder = tmp_path / "cloud"
    with dpskit.LocalCloud(folder, port=0, web_port=0) as cloud:
        hub = cloud.create_hub("hub-1")
        dps = cloud.create_dps("dps-1")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Doctor Test Root")
        intermediate = root.create_intermediate("Doctor Test Intermediate")
        dps.upload_ca_certificate("root", root, verified=True)
        dps.create_enrollment_group("devices", ca_reference="root")
        bundle = tmp_path / "trust.pem"
        bundle.write_text(cloud.trust_pem)
        devices = tmp_path / "devices"
        devices.mkdir()
        yield World(folder, cloud, dps, intermediate, bundle, devices)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def _files(
    world: World, device: dpskit.DeviceCertificate, pkcs12_password: str = ""
) -> dict[str, Path]:
    return device.save(world.devices, pkcs12_password=pkcs12_password)


def test_a_healthy_device_exits_0_with_a_table(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _files(world, world.intermediate.issue_device("dev-healthy"))
    status, out = _run(
        capsys,
        "doctor",
        "device",
        str(files["full_chain"]),
        "--key",
        str(files["private_key"]),
        "--trust-bundle",
        str(world.trust_bundle),
        "--local",
        str(world.folder),
        "--dps",
        "dps-1",
    )
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == "dpskit doctor: dev-healthy: healthy" or lines[0].startswith(
        "dpskit doctor: dev-healthy: healthy, "
    ), out
    assert lines[1].split() == ["VERDICT", "CHECK", "EVIDENCE", "FIX"]
    assert "files.parse" in out
    assert "PROBLEM" not in out
    assert "causes:" not in out


def test_the_traced_attempt_of_a_healthy_device_succeeds(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _files(world, world.intermediate.issue_device("dev-attempt"))
    status, out = _run(
        capsys,
        "doctor",
        "device",
        str(files["certificate"]),
        "--chain",
        str(files["chain"]),
        "--key",
        str(files["private_key"]),
        "--trust-bundle",
        str(world.trust_bundle),
        "--local",
        str(world.folder),
        "--connect",
        "--json",
    )
    assert status == 0, out
    report = json.loads(out)
    assert report["healthy"] is True
    assert report["causes"] == []
    attempt = report["attempt"]
    assert attempt["succeeded"] is True, attempt
    assert attempt["assigned_hub"] == world.cloud.hub("hub-1").host_name
    assert attempt["device_id"] == "dev-attempt"
    assert attempt["trace"], attempt


def test_the_python_attempt_and_its_trace(world: World) -> None:
    device = world.intermediate.issue_device("dev-trace")
    report = dpskit.doctor(device, dps=world.dps, connect=True, trust=world.trust_bundle)
    attempt = report.attempt
    assert attempt is not None
    assert attempt.succeeded, str(report)
    assert repr(attempt).startswith("<DoctorAttempt succeeded=True status=")
    assert report.check("files.parse").verdict == "ok"
    assert repr(report.check("files.parse")) == "<DoctorCheck files.parse ok>"
    steps = [step.step for step in attempt.trace]
    assert steps[0] == "dial", steps
    assert repr(attempt.trace[0]).startswith("<TraceStep ")
    # The table ends with the trace, one line a step.
    table = str(report)
    assert "attempt: succeeded" in table
    assert all(step in table for step in steps)


def test_an_expired_device_exits_1_with_its_problem_first(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    expired = world.intermediate.issue_device("dev-expired", days=30, not_before=long_ago)
    files = _files(world, expired)
    argv = [
        "doctor",
        "device",
        str(files["full_chain"]),
        "--key",
        str(files["private_key"]),
        "--trust-bundle",
        str(world.trust_bundle),
        "--local",
        str(world.folder),
    ]
    status, out = _run(capsys, *argv)
    assert status == 1, out
    lines = out.splitlines()
    assert lines[0].startswith("dpskit doctor: dev-expired: 1 problem"), out
    assert lines[2].startswith("PROBLEM"), out
    assert "causes: expired-leaf" in out

    status, out = _run(capsys, *argv, "--json")
    assert status == 1
    report = json.loads(out)
    assert report["healthy"] is False
    assert report["causes"] == ["expired-leaf"]
    first = report["checks"][0]
    assert (first["verdict"], first["cause"]) == ("problem", "expired-leaf")
    assert first["fix"]
    verdicts = [c["verdict"] for c in report["checks"]]
    assert verdicts == sorted(verdicts, key=["problem", "warning", "ok", "skipped"].index)


def test_a_pkcs12_file_opens_with_password_env(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "not-in-any-output-4711"
    files = _files(world, world.intermediate.issue_device("dev-pfx"), pkcs12_password=secret)
    monkeypatch.setenv("DEV_PFX_PASSWORD", secret)
    argv = [
        "doctor",
        "device",
        "--pkcs12",
        str(files["pkcs12"]),
        "--password-env",
        "DEV_PFX_PASSWORD",
        "--trust-bundle",
        str(world.trust_bundle),
        "--local",
        str(world.folder),
    ]
    status, out = _run(capsys, *argv)
    assert status == 0, out
    assert secret not in out

    status, out = _run(capsys, *argv, "--json")
    assert status == 0
    assert secret not in out
    parse = next(c for c in json.loads(out)["checks"] if c["id"] == "files.parse")
    assert parse["verdict"] == "ok"

    # The wrong password is the files' problem, reported rather than raised.
    monkeypatch.setenv("DEV_PFX_PASSWORD", "wrong")
    status, out = _run(capsys, *argv, "--json")
    assert status == 1, out
    report = json.loads(out)
    assert report["checks"][0]["id"] == "files.parse"
    assert "unreadable" in report["causes"]

    monkeypatch.delenv("DEV_PFX_PASSWORD")
    status, out = _run(capsys, *argv)
    assert status == 1
    assert "DEV_PFX_PASSWORD" in out
    assert "not set" in out


def test_offline_only_needs_no_cloud(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = dpskit.CertificateAuthority.create_root("Offline Root")
    files = (
        root.create_intermediate("Offline Intermediate").issue_device("dev-offline").save(tmp_path)
    )
    status, out = _run(
        capsys,
        "doctor",
        "device",
        str(files["full_chain"]),
        "--key",
        str(files["private_key"]),
        "--json",
    )
    report = json.loads(out)
    assert report["registration_id"] == "dev-offline"
    assert status == (0 if report["healthy"] else 1)
    # A missing file is reported as the files' problem, not raised.
    status, out = _run(capsys, "doctor", "device", str(tmp_path / "nope.pem"), "--json")
    assert status == 1
    report = json.loads(out)
    assert report["causes"] == ["unreadable"]
    assert report["checks"][0]["id"] == "files.parse"


def test_the_cli_refuses_contradictory_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _run(capsys, "doctor", "device")
    assert status == 1
    assert "certificate" in out
    status, out = _run(capsys, "doctor", "device", "a.pem", "--pkcs12", "b.pfx")
    assert status == 1
    assert "not both" in out
    status, out = _run(capsys, "doctor", "device", "--help")
    assert status == 0
    assert "exit status: 0 healthy, 1 problems found" in out
    assert "missing-intermediate" in out


def test_the_python_report(world: World) -> None:
    device = world.intermediate.issue_device("dev-api")
    report = dpskit.doctor(device, dps=world.dps, trust=world.trust_bundle.read_text())
    assert isinstance(report, dpskit.DoctorReport)
    assert report.registration_id == "dev-api"
    assert report.healthy
    assert report.causes == ()
    assert report.problems == ()
    assert report.check("files.parse").verdict == "ok"
    with pytest.raises(KeyError, match=r"files\.parse"):
        report.check("no.such.check")
    data = report.to_dict()
    assert data["checks"][0]["id"] == report.checks[0].id
    assert json.loads(report.to_json()) == data
    assert repr(report).startswith("<DoctorReport registration_id='dev-api' healthy=True")
    assert device.private_key_pem not in report.to_json() + repr(report) + str(report)
    assert "<table>" in report._repr_html_()
    assert set(report.causes) <= set(CAUSES)
    # A narrow terminal gets one block per check instead of columns.
    narrow = report.table(width=50)
    assert all(len(line) <= 50 for line in narrow.splitlines()[1:])


def test_the_python_api_refuses_contradictory_inputs(world: World, tmp_path: Path) -> None:
    device = world.intermediate.issue_device("dev-bad-args")
    with pytest.raises(dpskit.ConfigError, match="not both"):
        dpskit.doctor(tmp_path / "a.pem", pkcs12=tmp_path / "b.pfx")
    with pytest.raises(dpskit.ConfigError, match="certificate"):
        dpskit.doctor()
    with pytest.raises(dpskit.ConfigError, match="key and chain"):
        dpskit.doctor(device, key=tmp_path / "k.pem")
    with pytest.raises(dpskit.ConfigError, match="key and chain"):
        dpskit.doctor(pkcs12=tmp_path / "b.pfx", key=tmp_path / "k.pem")
    with pytest.raises(dpskit.ConfigError, match="needs the dps"):
        dpskit.doctor(device, connect=True)
    with pytest.raises(dpskit.ConfigError, match="NO_SUCH_VARIABLE_4711"):
        dpskit.doctor(pkcs12=tmp_path / "b.pfx", password_env="NO_SUCH_VARIABLE_4711")
    with pytest.raises(dpskit.ConfigError, match="not both"):
        dpskit.doctor(pkcs12=tmp_path / "b.pfx", password="x", password_env="HOME")
