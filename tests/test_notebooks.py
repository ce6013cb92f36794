"""Every notebook runs top to bottom in a fresh kernel (they are committed without outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import execute_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    execute_notebook(path, tmp_path, timeout=120)
