"""What a release ships: the Linux wheel installed in a fresh venv runs ``dpskit demo``, the sdist
holds every source file, and the release workflow passes actionlint and still builds a wheel for
every platform the README promises."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"

#: (platform, target) pairs the release workflow must build a wheel for.
REQUIRED_WHEELS = {
    ("manylinux", "x86_64"),
    ("manylinux", "aarch64"),
    ("musllinux", "x86_64"),
    ("musllinux", "aarch64"),
    ("macos", "x86_64"),
    ("macos", "aarch64"),
    ("windows", "x86_64"),
}


def tool(name: str) -> str:
    """A command line tool of the test environment (``pip install -e '.[test]'`` installs it
    next to the interpreter); missing is a failure, not a skip, so the check cannot vanish."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at this checkout or venv."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }


# ---- the Linux wheel ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_linux_wheel_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    # `maturin build` with the same profile, features and CARGO_TARGET_DIR as the editable
    # install reuses its release build: packaging only, unless the Rust changed since.
    dist = tmp_path / "dist"
    built = subprocess.run(
        [tool("maturin"), "build", "--release", "--locked", "--out", str(dist)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("*.whl")
    # One wheel for every CPython >= 3.10 (pyo3's abi3-py310), tagged manylinux: maturin's
    # audit found no shared library outside the manylinux set (no OpenSSL, SQLite built in).
    machine = platform.machine()
    assert re.fullmatch(
        rf"dpskit-[^-]+-cp310-abi3-manylinux_2_\d+_{machine}(\.manylinux\w+)*\.whl", wheel.name
    ), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    # The Kubernetes Job template is package data, read by `dpskit fleet kubernetes`.
    shipped = ("dpskit/_native.pyi", "dpskit/py.typed", "dpskit/deploy/fleet-indexed-job.yaml")
    for member in ("dpskit/_native.abi3.so", *shipped):
        assert member in names
    assert not [n for n in names if n.endswith(".so") and n != "dpskit/_native.abi3.so"]
    headers = metadata.decode()
    assert "Requires-Python: >=3.10" in headers
    # No runtime dependency: the wheel installs with --no-index, offline.
    requires = [line for line in headers.splitlines() if line.startswith("Requires-Dist:")]
    assert not [line for line in requires if "extra ==" not in line]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, dpskit_cli = venv / "bin" / "python", venv / "bin" / "dpskit"
    offline = ["--no-deps", "--no-index", "--disable-pip-version-check"]
    subprocess.run(
        [python, "-m", "pip", "install", "-q", *offline, str(wheel)],
        check=True,
        timeout=300,
        env=clean_env(),
    )
    # Imported from the venv, not from this checkout (cwd is elsewhere, no PYTHONPATH).
    probe = (
        "import dpskit, dpskit._native as n, json; "
        "print(json.dumps([dpskit.__file__, n.__file__, dpskit.__version__]))"
    )
    where = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    package, native, version = json.loads(where.stdout)
    site = venv.resolve()
    assert Path(package).resolve().is_relative_to(site), package
    assert Path(native).resolve().is_relative_to(site), native
    assert native.endswith("_native.abi3.so")
    assert wheel.name.startswith(f"dpskit-{version}-")

    # The README's main job, from the installed console script, on an ephemeral port with its
    # folder in tmp.
    demo = subprocess.run(
        [dpskit_cli, "demo", "--dir", "demo"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count("assigned to ") == 3
    assert demo.stdout.count("3 messages stored by the hub") == 3
    assert "Done in" in demo.stdout
    assert (tmp_path / "demo" / "cloud" / "state.sqlite3").exists()


# ---- the sdist ----------------------------------------------------------------------------


def test_the_sdist_holds_every_source_file(tmp_path: Path) -> None:
    built = subprocess.run(
        [tool("maturin"), "sdist", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (sdist,) = tmp_path.glob("dpskit-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        pkg_info = archive.extractfile(f"{sdist.name[: -len('.tar.gz')]}/PKG-INFO")
        assert pkg_info is not None
        headers = pkg_info.read().decode()
    for needed in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "src/lib.rs"):
        assert needed in members
    assert "Requires-Python: >=3.10" in headers
    # Everything a build reads: every source file under src/ and python/ (a build from the
    # sdist compiles what was tested), and no build output (the editable install's module).
    sources = {
        path.relative_to(ROOT).as_posix()
        for top in ("src", "python")
        for path in (ROOT / top).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix not in {".so", ".pyd", ".pyc"}
    }
    assert sources
    assert sources <= members, sorted(sources - members)
    assert not [m for m in members if m.endswith((".so", ".pyd")) or m.startswith("target/")]


# ---- the release workflow -----------------------------------------------------------------


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # shellcheck, when installed (.ci/run installs it), checks the `run:` scripts too.
    return subprocess.run(
        [tool("actionlint"), "-no-color", *(str(f) for f in files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_workflows_pass_actionlint() -> None:
    files = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert RELEASE in files
    linted = actionlint(*files)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The lint above can fail: a matrix property misspelt in one condition is reported."""
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    text = RELEASE.read_text()
    assert "if: matrix.smoke == " in text
    broken.write_text(text.replace("if: matrix.smoke == ", "if: matrix.smoek == ", 1))
    linted = actionlint(broken, cwd=tmp_path)
    assert linted.returncode != 0
    assert 'property "smoek" is not defined' in linted.stdout


def load_release() -> dict[str, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(RELEASE.read_text())
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def test_the_release_builds_every_platform_and_publishes_on_tags_only() -> None:
    workflow = load_release()
    jobs = workflow["jobs"]
    wheel = jobs["wheel"]
    entries = wheel["strategy"]["matrix"]["include"]
    built = {(entry["platform"], entry["target"]) for entry in entries}
    assert built >= REQUIRED_WHEELS, sorted(REQUIRED_WHEELS - built)
    for entry in entries:
        if entry["platform"] == "manylinux":
            assert re.fullmatch(r"(2014|2_\d+)", entry["manylinux"]), entry
        elif entry["platform"] == "musllinux":
            assert re.fullmatch(r"musllinux_\d+_\d+", entry["manylinux"]), entry
    # The matrix reaches maturin: every entry builds its own target and libc.
    (build,) = [s for s in wheel["steps"] if s.get("uses", "").startswith("PyO3/maturin-action@")]
    assert build["with"]["target"] == "${{ matrix.target }}"
    assert build["with"]["manylinux"] == "${{ matrix.manylinux }}"
    assert "--release" in build["with"]["args"].split()
    # The one native wheel the runner can run is run before it is published.
    assert {"platform": "manylinux", "target": "x86_64", "smoke": "demo"}.items() <= next(
        e for e in entries if (e["platform"], e["target"]) == ("manylinux", "x86_64")
    ).items()

    sdist_steps = jobs["sdist"]["steps"]
    assert any(s.get("with", {}).get("command") == "sdist" for s in sdist_steps)

    # Published by trusted publishing (an OIDC token, no stored secret), for tags only.
    assert set(workflow["on"]) <= {"push", "workflow_dispatch"}
    assert set(workflow["on"]["push"]) == {"tags"}
    assert workflow["permissions"] == {"contents": "read"}
    publish = jobs["publish"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(publish["needs"]) == {"wheel", "sdist"}
    assert publish["permissions"] == {"id-token": "write"}
    assert any(
        s.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for s in publish["steps"]
    )
    assert "secrets." not in RELEASE.read_text()

    # Every action is pinned to a commit: a moved tag cannot change what runs with PyPI rights.
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
