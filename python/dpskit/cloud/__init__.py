"""The clouds: ``LocalCloud`` (DPS and IoT Hub emulated in-process) and ``AzureCloud`` (real
Azure), and the objects that manage their resources.

Both go through one REST client (Rust): ARM for hubs, DPS instances, links and CA certificates,
the DPS service API for enrollments and registrations, the hub service API for devices, twins,
methods and messages. ``LocalCloud`` starts the embedded emulator (real MQTT and HTTPS over
real TLS, state in SQLite) and points the client at it; only the emulator's realism knobs and
traces bypass REST.

The package, by room (each module imports only those above it when it runs; ``hub`` and
``dps`` name ``base`` for the type checker only)::

    _common.py      literal types, the MQTT port, Azure's time formats, certificate coercion
    records.py      the read-only records (CA certificates, links, usage, devices, telemetry)
    enrollments.py  enrollment groups, individual enrollments, registration records
    recording.py    the local cloud's request recording
    hub.py          Hub
    dps.py          Dps
    registry.py     DeviceRegistryNamespace, CredentialPolicy (Azure Device Registry)
    base.py         _Cloud, what both clouds share (resources through ARM)
    local.py        LocalCloud, LocalCloudClient, the endpoints file
    azure.py        AzureCloud

Everything public is imported from here: ``from dpskit.cloud import Hub``.
"""

from __future__ import annotations

# Names beyond __all__ stay importable from here as they were before the split (`X as X`
# re-exports them for mypy --strict and ruff): the settings' types, the endpoints file, and the
# private helpers the rest of dpskit and its tests use.
from dpskit.cloud._common import DEFAULT_MQTT_PORT as DEFAULT_MQTT_PORT
from dpskit.cloud._common import AllocationPolicy as AllocationPolicy
from dpskit.cloud._common import Authentication as Authentication
from dpskit.cloud._common import CertificateLike as CertificateLike
from dpskit.cloud._common import CustomAllocation as CustomAllocation
from dpskit.cloud._common import ProvisioningStatus as ProvisioningStatus
from dpskit.cloud._common import _azure_time as _azure_time
from dpskit.cloud._common import _unix as _unix
from dpskit.cloud.azure import AzureCloud
from dpskit.cloud.base import _Cloud as _Cloud
from dpskit.cloud.dps import Dps
from dpskit.cloud.enrollments import (
    Enrollment,
    EnrollmentGroup,
    RegistrationRecord,
    ReprovisionPolicy,
)
from dpskit.cloud.hub import Hub
from dpskit.cloud.local import ENDPOINTS_FILE as ENDPOINTS_FILE
from dpskit.cloud.local import LOCAL_TOKEN as LOCAL_TOKEN
from dpskit.cloud.local import LocalCloud, LocalCloudClient
from dpskit.cloud.local import _process_alive as _process_alive
from dpskit.cloud.local import _raise_open_file_limit as _raise_open_file_limit
from dpskit.cloud.recording import RecordedRequest as RecordedRequest
from dpskit.cloud.recording import RequestRecording as RequestRecording
from dpskit.cloud.records import (
    C2dFeedback,
    CaCertificateInfo,
    CertificateSummary,
    HubDevice,
    HubEvent,
    HubUsage,
    LinkedHub,
    MethodResult,
    TelemetryMessage,
    TelemetryRecords,
    TraceEvent,
)
from dpskit.cloud.records import ThrottledRequests as ThrottledRequests
from dpskit.cloud.registry import CredentialPolicy, DeviceRegistryNamespace

__all__ = [
    "AzureCloud",
    "C2dFeedback",
    "CaCertificateInfo",
    "CertificateSummary",
    "CredentialPolicy",
    "DeviceRegistryNamespace",
    "Dps",
    "Enrollment",
    "EnrollmentGroup",
    "Hub",
    "HubDevice",
    "HubEvent",
    "HubUsage",
    "LinkedHub",
    "LocalCloud",
    "LocalCloudClient",
    "MethodResult",
    "RegistrationRecord",
    "ReprovisionPolicy",
    "TelemetryMessage",
    "TelemetryRecords",
    "TraceEvent",
]
