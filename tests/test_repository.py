"""The repository's promises to newcomers: the README's commands are the ones CI runs."""

from __future__ import annotations

import json
import re
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
    # The first `version = "..."` of each file is the package's own (tomllib needs 3.11).
    def first_version(name: str) -> str:
        match = re.search(r'^version = "([^"]+)"$', (ROOT / name).read_text(), re.MULTILINE)
        assert match, name
        return match.group(1)

    cargo = first_version("Cargo.toml")
    project = first_version("pyproject.toml")
    assert cargo == project == dpskit.__version__


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has stored outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"


def test_the_readme_quick_start_runs() -> None:
    """The README's quick start is executed as written, so it cannot rot."""
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    code = section[section.index("```python") + len("```python") : section.index("\n```\n")]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "127.0.0.2 {'temperature': 21.5}"
