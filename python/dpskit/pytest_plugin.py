"""pytest fixtures for suites that need X.509 identities (registered through ``pytest11``).

- ``dpskit_ca``: a session-wide root → intermediate hierarchy (EC P-256); the intermediate
  issues devices, ``dpskit_ca.root`` is the trust anchor.
- ``device_certificate``: a factory, ``device_certificate("sensor-1")`` → a fresh
  :class:`dpskit.DeviceCertificate` issued by ``dpskit_ca``.
- ``dpskit_cloud``: a running :class:`dpskit.LocalCloud` on a free port with a temporary state
  folder, stopped (and the folder deleted) after the test.

The native module is imported inside the fixtures only, so merely having dpskit installed costs
other test suites nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dpskit import CertificateAuthority, DeviceCertificate, LocalCloud

__all__ = ["TestHierarchy", "device_certificate", "dpskit_ca", "dpskit_cloud"]


@dataclass(frozen=True)
class TestHierarchy:
    """A root CA and the intermediate that issues test devices."""

    __test__ = False  # not a test class, despite the name

    root: CertificateAuthority
    intermediate: CertificateAuthority

    def issue_device(self, registration_id: str, **options: object) -> DeviceCertificate:
        """Issues a device certificate from the intermediate."""
        return self.intermediate.issue_device(registration_id, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dpskit_ca() -> TestHierarchy:
    """A root → intermediate hierarchy shared by the whole test session."""
    from dpskit import CertificateAuthority

    root = CertificateAuthority.create_root("dpskit pytest Root CA")
    return TestHierarchy(
        root=root, intermediate=root.create_intermediate("dpskit pytest Issuing CA")
    )


@pytest.fixture
def device_certificate(dpskit_ca: TestHierarchy) -> Callable[..., DeviceCertificate]:
    """A factory of device certificates issued by ``dpskit_ca``'s intermediate."""
    return dpskit_ca.issue_device


@pytest.fixture
def dpskit_cloud() -> Iterator[LocalCloud]:
    """A running local cloud (free port, temporary state), stopped after the test."""
    from dpskit import LocalCloud

    with LocalCloud(port=0) as cloud:
        yield cloud
