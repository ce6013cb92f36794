"""The certificate benchmark still runs end to end (tiny counts, no timing assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
