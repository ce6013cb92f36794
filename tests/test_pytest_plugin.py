"""The pytest plugin's fixtures, used the way a downstream suite uses them."""

from __future__ import annotations

from collections.abc import Callable

import dpskit
from dpskit.pytest_plugin import TestHierarchy


def test_device_certificate_factory_chains_to_the_session_root(
    dpskit_ca: TestHierarchy, device_certificate: Callable[..., dpskit.DeviceCertificate]
) -> None:
    device = device_certificate("plugin-device-1", days=7)
    assert device.registration_id == "plugin-device-1"
    path = dpskit.verify_chain(
        device.certificate, [dpskit_ca.intermediate.certificate], [dpskit_ca.root.certificate]
    )
    assert [c.common_name for c in path] == [
        "plugin-device-1",
        "dpskit pytest Issuing CA",
        "dpskit pytest Root CA",
    ]


def test_session_hierarchy_is_shared(dpskit_ca: TestHierarchy) -> None:
    assert dpskit_ca.intermediate.certificate.is_ca
    assert dpskit_ca.intermediate.certificate.path_length == 0


def test_dpskit_cloud_is_a_running_local_cloud(
    dpskit_cloud: dpskit.LocalCloud,
    dpskit_ca: TestHierarchy,
    device_certificate: Callable[..., dpskit.DeviceCertificate],
) -> None:
    assert dpskit_cloud.is_running
    dps = dpskit_cloud.create_dps("plugin-dps")
    dpskit_cloud.link_hub(dps, dpskit_cloud.create_hub("plugin-hub"))
    dps.prove_possession("issuing", dpskit_ca.intermediate)
    dps.create_enrollment_group("plugin", ca_reference="issuing")
    [outcome] = dpskit.provision_devices(dps, [device_certificate("plugin-device-2")])
    assert outcome.ok, outcome.error
