"""Platform assumptions that a Linux run can still check (ARCHITECTURE.md, "Platforms"): PEM
files with Windows line endings (CRLF, as Notepad or git's autocrlf leave them) load exactly as
their LF originals, including encrypted keys, chains and the emulator's own CA in a data
folder; and the open-file limit is raised where macOS refuses the usual value."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import dpskit


def crlf(path: Path) -> Path:
    """Rewrites ``path`` with CRLF line endings (and returns it)."""
    text = path.read_bytes().replace(b"\r\n", b"\n")
    assert b"\r" not in text
    path.write_bytes(text.replace(b"\n", b"\r\n"))
    assert path.read_bytes().count(b"\r\n") == text.count(b"\n")
    return path


def test_crlf_pem_files_load_as_their_lf_originals(tmp_path: Path) -> None:
    root = dpskit.CertificateAuthority.create_root("CRLF Root", algorithm="rsa-2048")
    inter = root.create_intermediate("CRLF Intermediate")
    device = inter.issue_device("crlf-device")

    files = {
        k: crlf(p) for k, p in inter.save(tmp_path, key_password="pw").items() if p.suffix == ".pem"
    }
    loaded = dpskit.CertificateAuthority.load(
        files["certificate"], files["private_key"], password="pw"
    )
    assert loaded.certificate.thumbprint_sha256 == inter.certificate.thumbprint_sha256
    assert loaded.private_key_der == inter.private_key_der

    lf = device.save(tmp_path / "lf")
    saved = {k: crlf(p) for k, p in device.save(tmp_path / "crlf").items() if p.suffix == ".pem"}
    again = dpskit.DeviceCertificate.load(saved["chain"], saved["private_key"])
    original = dpskit.DeviceCertificate.load(lf["chain"], lf["private_key"])
    assert again.certificate.thumbprint_sha256 == device.certificate.thumbprint_sha256
    assert again.private_key_der == device.private_key_der
    assert [c.thumbprint_sha256 for c in again.issuers] == [
        c.thumbprint_sha256 for c in original.issuers
    ]
    assert [c.thumbprint_sha256 for c in dpskit.Certificate.load_all(saved["chain"])] == [
        c.thumbprint_sha256 for c in dpskit.Certificate.load_all(lf["chain"])
    ]
    assert len(dpskit.Certificate.load_all(saved["chain"])) == 2
    # Text with CRLF, as pasted from a Windows editor.
    pem = device.certificate_pem.replace("\n", "\r\n")
    assert (
        dpskit.Certificate.from_pem(pem).thumbprint_sha256 == device.certificate.thumbprint_sha256
    )


def test_a_data_folder_whose_ca_files_have_crlf_keeps_its_ca(tmp_path: Path) -> None:
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        trust = cloud.trust_pem
    for name in ("emulator-ca.cert.pem", "emulator-ca.key.pem"):
        crlf(tmp_path / name)
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        # The same CA (not a new one made because the files did not parse).
        assert cloud.trust_pem.replace("\r\n", "\n") == trust


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX open-file limits")
def test_the_open_file_limit_is_raised_where_macos_caps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    from dpskit.cloud import _raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 10_240:
        pytest.skip(f"the hard open-file limit ({hard}) is below what macOS allows")
    real = resource.setrlimit
    refused: list[int] = []

    def like_macos(which: int, limits: tuple[int, int]) -> None:
        # setrlimit(2) on macOS: EINVAL for a soft limit above OPEN_MAX.
        if which == resource.RLIMIT_NOFILE and limits[0] > 10_240:
            refused.append(limits[0])
            raise ValueError("current limit exceeds maximum limit")
        real(which, limits)

    real(resource.RLIMIT_NOFILE, (256, hard))
    try:
        monkeypatch.setattr(resource, "setrlimit", like_macos)
        _raise_open_file_limit()
        assert refused, "the first value tried is above OPEN_MAX"
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 10_240
    finally:
        real(resource.RLIMIT_NOFILE, (soft, hard))


def test_attach_tells_a_running_emulator_from_a_gone_one(tmp_path: Path) -> None:
    import subprocess

    from dpskit.cloud import _process_alive

    assert _process_alive(os.getpid())
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert not _process_alive(int(gone.stdout))
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        attached = dpskit.LocalCloud.attach(tmp_path)
        assert attached is not None
        assert [h.name for h in attached.hubs()] == []
        assert cloud.is_running  # looking did not stop it (os.kill(pid, 0) would, on Windows)


def test_cli_output_survives_a_console_without_the_characters() -> None:
    import subprocess

    # As on Windows with output redirected: the ANSI code page has no "→".
    script = "from dpskit.cli import main; main(['--version']); print('ok → done')"
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == b"ok ? done"
