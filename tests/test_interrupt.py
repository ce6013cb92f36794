"""Ctrl-C reaches code blocked in the Rust core: the work is cancelled and ``KeyboardInterrupt``
raised at once, not when the work ends (here a registration that would wait two minutes for a
server that never answers)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import socket, sys, threading
import dpskit

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
held = []

def accept():
    while True:
        held.append(server.accept())  # never answered: the device waits for its timeout
        print("connected", flush=True)

threading.Thread(target=accept, daemon=True).start()
root = dpskit.CertificateAuthority.create_root("Interrupt Root")
device = root.issue_device("interrupt-me")
endpoint = "127.0.0.1:%d" % server.getsockname()[1]
try:
    dpskit.provision_devices(
        endpoint, [device], id_scope="0ne00000000", trust=root.certificate.pem, timeout=120
    )
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT, which Windows has not")
def test_ctrl_c_cancels_a_blocking_batch_of_registrations() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        # The device has dialled: the main thread is inside the Rust call.
        assert child.stdout.readline().strip() == "connected"
        child.send_signal(signal.SIGINT)
        # Far less than the registration's 120 s: without the signal check this times out.
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, out + err
    assert out.strip() == "interrupted", out + err
