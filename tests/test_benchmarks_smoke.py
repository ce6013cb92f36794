"""The benchmarks still run end to end (tiny counts, no timing assertions)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARK = Path(__file__).parent / "benchmarks" / "bench_certificates.py"


def test_benchmark_runs_with_small_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("bench_certificates", BENCHMARK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules, so the module must be registered.
    monkeypatch.setitem(sys.modules, "bench_certificates", module)
    spec.loader.exec_module(module)

    argv = ["--count", "50", "--pyca-count", "20", "--openssl-count", "2", "--rsa-count", "2"]
    assert module.main([*argv, "--no-rsa4096"]) == 0

    out = capsys.readouterr().out
    assert module.TABLE_HEADER in out
    assert "dpskit/pyca" in out
    assert "pyca/cryptography loop" in out


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location(name, BENCHMARK.parent / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_hub_benchmark_runs_against_the_emulator_and_mosquitto(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_hub", monkeypatch)
    argv = ["--idle", "150", "--senders", "6", "--messages", "300", "--window", "20"]
    # 0 means every acknowledged message was in the emulator's store after its SIGKILL.
    assert module.main(argv) == 0

    out = capsys.readouterr().out
    emulator_row = next(line for line in out.splitlines() if line.startswith("dpskit emulator "))
    assert emulator_row.split()[2] == "150", emulator_row
    # The same load over WebSockets, durable too, and its ratio to TLS.
    websockets_row = next(
        line for line in out.splitlines() if line.startswith("dpskit emulator, WebSockets")
    )
    assert websockets_row.split()[3] == "150", websockets_row
    assert out.count("1800 of 1800 acknowledged messages stored (0 lost)") == 2, out
    assert "ratio WebSockets / TLS" in out
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        assert any(line.startswith("mosquitto ") for line in out.splitlines())
        assert "ratio emulator / mosquitto" in out
    else:
        assert "mosquitto is not installed" in out


# The SDK itself builds its TLS context with the deprecated ssl.PROTOCOL_TLSv1_2: not ours to fix.
@pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")
def test_device_benchmark_runs_with_small_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_device", monkeypatch)
    assert module.main(["--devices", "40", "--sdk-devices", "3"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("dpskit provision"))
    assert row.split()[4] == "40", row
    assert "ratio dpskit / SDK" in out or "official SDK not measured" in out


@pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")
def test_fleet_benchmark_runs_with_small_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_fleet", monkeypatch)
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    assert module.main(["--devices", "60", "--messages", "5", "--sdk-devices", "3"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("dpskit.Fleet"))
    assert row.split()[-4] == "60", row
    assert "messages acknowledged" in out
    assert "ratio dpskit / SDK" in out or "official SDK not measured" in out


def test_fleet_workers_benchmark_runs_with_small_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_fleet_workers", monkeypatch)
    # The spawned workers import the benchmark's own functions by module name.
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    assert module.main(["--devices", "30", "--workers", "2", "--messages", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"emulator --max-connections {module.connection_limit():,}" in out
    row = next(line for line in lines if line.startswith("devices provisioned + connected"))
    assert row.split()[-2:] == ["30", "30"], row
    acked = next(line for line in lines if line.startswith("messages acknowledged"))
    assert acked.split()[-2:] == ["60", "60"], acked
    # Ratios, not judged: memory's may be blank, as 30 devices may not grow this process's RSS.
    for label in ("devices/s", "wall time of run()", "messages/s"):
        assert next(line for line in lines if line.startswith(label)).endswith("x"), label
    assert any(line.startswith("memory per device, KB") for line in lines), out
    emulator_rows = [line for line in lines if line.startswith("emulator RSS")]
    assert len(emulator_rows) == (3 if sys.platform == "linux" else 1), out


def test_soak_benchmark_loses_nothing_through_drops_in_a_short_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_soak", monkeypatch)
    # Under 60 s the memory is reported, not judged (the run is all warm-up).
    argv = ["--devices", "4", "--duration", "6", "--drop-interval", "0.5"]
    assert module.main(argv) == 0

    out = capsys.readouterr().out
    drops = next(line for line in out.splitlines() if line.startswith("drops "))
    assert int(drops.split()[1]) > 0, drops
    telemetry = next(line for line in out.splitlines() if line.startswith("telemetry "))
    assert "acknowledged messages stored (0 lost)" in telemetry, telemetry
    c2d = next(line for line in out.splitlines() if line.startswith("C2D "))
    assert c2d.split(", lost ")[1].split()[0] == "0", c2d
    assert "not judged (run < 60 s)" in out
    assert "verdict: PASS" in out


def test_events_benchmark_reads_what_the_hub_ingested_with_both_readers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_events", monkeypatch)
    assert module.main(["--devices", "6", "--messages", "40", "--window", "10"]) == 0
    out = capsys.readouterr().out
    assert "dpskit retained_events()" in out
    assert "azure-eventhub receive_batch" in out
    assert "dpskit reader / official consumer:" in out
    assert "kept up" in out or "fell behind" in out


def test_issuance_benchmark_runs_with_small_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load("bench_issuance", monkeypatch)
    assert module.main(["--devices", "30", "--renewals", "10", "--concurrency", "8"]) == 0
    out = capsys.readouterr().out
    assert module.TABLE_HEADER in out
    rows = {line[:46].strip(): line[46:].split() for line in out.splitlines() if "  " in line}
    assert rows["X.509 provisioning + CSR (certificate issued)"][:2] == ["30", "0"], out
    assert rows["renewal through the hub ($iothub/credentials)"][:2] == ["10", "0"], out
    assert "ratio provisioning with issuance / without" in out
