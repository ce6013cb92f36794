"""Acknowledged state survives a kill -9: configuration, CA verification, registrations and hub
identities are all there when a new LocalCloud opens the same folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dpskit

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import dpskit

    data = sys.argv[1]
    cloud = dpskit.LocalCloud(data, port=0, poll_retry_after=0)
    dps = cloud.create_dps("durable-dps")
    cloud.link_hub(dps, cloud.create_hub("durable-hub"))
    root = dpskit.CertificateAuthority.create_root("Durable Root")
    dps.prove_possession("root", root)
    dps.create_enrollment_group("durable", ca_reference="root")
    devices = root.issue_devices([f"durable-{i:03d}" for i in range(20)])
    outcomes = dpskit.provision_devices(dps, devices)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    summary = {"id_scope": dps.id_scope, "trust": cloud.trust_pem,
               "hubs": {o.registration_id: o.assigned_hub for o in outcomes}}
    print(json.dumps(summary), flush=True)
    # No stop(), no flush, no atexit: the process dies as under kill -9.
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_state_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "cloud"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(data)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    before = json.loads(child.stdout.strip().splitlines()[-1])

    with dpskit.LocalCloud(data, port=0) as cloud:
        assert cloud.trust_pem == before["trust"], "the emulator's CA is kept"
        dps = cloud.dps("durable-dps")
        assert dps.id_scope == before["id_scope"]
        assert dps.ca_certificate("root").is_verified
        assert dps.enrollment_group("durable").ca_references == ("root",)
        records = {r.registration_id: r for r in dps.registrations("durable")}
        assert {k: r.assigned_hub for k, r in records.items()} == before["hubs"]
        assert all(r.status == "assigned" for r in records.values())
        hub = cloud.hub("durable-hub")
        assert sorted(d.device_id for d in hub.devices()) == sorted(before["hubs"])
