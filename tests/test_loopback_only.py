"""Hubs on a machine whose loopback is only 127.0.0.1 (macOS without ``ifconfig lo0 alias``).

The real thing, reproduced on Linux: a network namespace whose loopback holds ``127.0.0.1/32``
alone and a mount namespace whose /etc/hosts resolves ``localhost`` to ::1 first (as macOS and
Windows do). In them ``loopback_only_checks.py`` runs the walkthrough with dpskit's clients and
the official SDK on two hubs, a restart, ``dpskit demo``, every notebook (the walkthrough, the
two-hub fleet), and the errors that say what to run (needs root and ``unshare``, as in CI). The
rest runs anywhere: ``DPSKIT_SHARED_HUB_ADDRESSES=1`` gives hubs the shared names where their
own addresses would work, and ``dpskit emulator --print-loopback-setup`` prints the setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dpskit
from dpskit.cli import main

HERE = Path(__file__).resolve().parent


def namespace_setup(hosts: Path) -> str:
    """Shell commands run in the new namespaces: the loopback up, its 127.0.0.1/8 replaced by
    127.0.0.1/32 (no local route for the rest of 127.0.0.0/8), and ``hosts`` over /etc/hosts."""
    return (
        "ip link set lo up && ip addr del 127.0.0.1/8 dev lo && "
        f"ip addr add 127.0.0.1/32 dev lo && mount --bind {hosts} /etc/hosts"
    )


def macos_like_hosts(folder: Path) -> Path:
    """/etc/hosts with ``localhost`` resolving to ::1 first, as on macOS and Windows."""
    hosts = folder / "hosts"
    hosts.write_text("::1 localhost\n127.0.0.1 localhost\n" + Path("/etc/hosts").read_text())
    return hosts


def namespace_unavailable(hosts: Path) -> str | None:
    """Why the namespaces cannot be made here, or ``None``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "making network and mount namespaces needs root (CI runs as root)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs the unshare and ip commands (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", namespace_setup(hosts)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make the namespaces here: {probe.stderr.strip()}"
    return None


@pytest.mark.timeout(900)
def test_everything_works_where_the_loopback_is_only_127_0_0_1(tmp_path: Path) -> None:
    hosts = macos_like_hosts(tmp_path)
    reason = namespace_unavailable(hosts)
    if reason is not None:
        pytest.skip(reason)
    # A data folder from a machine with all of 127.0.0.0/8: its hub has 127.0.0.2.
    foreign = tmp_path / "foreign"
    with dpskit.LocalCloud(foreign, port=0) as cloud:
        assert cloud.create_hub("linux-hub").host_name == "127.0.0.2"
    checks = HERE / "loopback_only_checks.py"
    run = subprocess.run(
        [
            "unshare",
            "-n",
            "-m",
            "sh",
            "-c",
            f'{namespace_setup(hosts)} && exec "$0" "$@"',
            sys.executable,
            "-m",
            "pytest",
            str(checks),
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            f"--basetemp={tmp_path / 'inside'}",
        ],
        env={
            **os.environ,
            "DPSKIT_LOOPBACK_ONLY": "1",
            "DPSKIT_FOREIGN_DATA_DIR": str(foreign),
        },
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # Every check ran and passed (none skipped): the namespace did what it should.
    assert "PASSED tests/loopback_only_checks.py::test_the_loopback_holds_only_127_0_0_1" in output
    notebooks = len(list((HERE.parent / "notebooks").glob("*.ipynb")))
    assert output.splitlines()[-1].startswith(f"{5 + notebooks} passed in "), output


def test_shared_names_on_request_then_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPSKIT_SHARED_HUB_ADDRESSES", "1")
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        names = [cloud.create_hub(f"shared-{i}").host_name for i in range(2)]
        assert names == ["127.0.0.1", "localhost"]
        with pytest.raises(dpskit.DpsKitError) as caught:
            cloud.create_hub("shared-2")
        message = str(caught.value)
        assert "DPSKIT_SHARED_HUB_ADDRESSES=1 asks hubs to share" in message, message
        assert "(127.0.0.1, localhost)" in message, message
        assert "127.0.0.2 next" in message, message
    # Without the variable the stored names stay, and the next hub takes its own address.
    monkeypatch.delenv("DPSKIT_SHARED_HUB_ADDRESSES")
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        assert sorted(h.host_name for h in cloud.hubs()) == ["127.0.0.1", "localhost"]
        assert cloud.create_hub("own").host_name == "127.0.0.2"


def test_print_loopback_setup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulator", "--print-loopback-setup", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    if sys.platform == "darwin":
        commands = ["sudo ifconfig lo0 alias 127.0.0.2 up", "sudo ifconfig lo0 alias 127.0.0.3 up"]
    elif sys.platform.startswith("linux"):
        commands = ["sudo ip addr add 127.0.0.2/8 dev lo", "sudo ip addr add 127.0.0.3/8 dev lo"]
    else:
        commands = []
    assert lines[0].startswith("# ")
    assert lines[1:] == commands
