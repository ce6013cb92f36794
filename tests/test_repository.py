"""The repository's promises to newcomers: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import dpskit

ROOT = Path(__file__).resolve().parent.parent


def test_readme_shows_the_command_ci_runs() -> None:
    ci_run = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.+)"$', ci_run, re.MULTILINE)
    assert match, ".ci/run must define TEST_COMMAND"
    readme = (ROOT / "README.md").read_text()
    assert match.group(1) in readme
    assert "dpskit demo" in readme


def test_versions_agree() -> None:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cargo == project == dpskit.__version__


def test_notebooks_are_committed_without_outputs() -> None:
    import json

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has stored outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"
