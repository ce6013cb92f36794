"""Request parity with the official SDKs: for each management and service operation dpskit
performs, the official SDK does the same operation against the emulator, the emulator's request
recorder (``LocalCloud.record_requests``) captures both requests, and they must agree on method,
path, api-version, ``If-Match``, content type, ``Accept`` and the JSON body.

Peers: ``azure-mgmt-iothub`` (ARM IotHubs), ``azure-mgmt-iothubprovisioningservices`` (ARM
provisioningServices, linked hubs, CA certificates), ``azure-iot-deviceprovisioning`` (the DPS
service API) and ``azure-iot-hub`` (the hub service API: its REST client's base URL is pointed at
the emulator's HTTPS port and its trust at the emulator's CA; nothing else is changed). dpskit
runs as ``AzureCloud`` against the emulator's ARM (so its ARM path is the one Azure sees) and
through ``Dps``/``Hub`` for the service APIs. Both sides act on the same resource names, so
paths and bodies compare as they are.

What the comparison forgives, and why (everything else must be equal):

- Values that must differ between two runs: ``If-Match`` etag values (their form still counts:
  quoted or not, wildcard or not; the emulator refuses a stale etag, so both being accepted
  shows both were current), a DPS resource's ``etag`` in a linked-hub PUT body. Key material
  never reaches the comparison: the recorder redacts it.
- ``If-Match: *`` (dpskit, IoT Hub's REST reference: "set If-Match to the wildcard character
  (*)") and ``"*"`` (azure-iot-hub quotes every etag, the wildcard included): the same wildcard
  to IoT Hub.
- ``certificate`` fields: dpskit sends PEM text, as the Azure CLI does; the management SDK's
  bytearray sends base64 of whatever bytes it is given (here the PEM). Equal when they decode
  to the same certificate (PEM text, base64 of PEM or base64 of DER).
- ``Content-Type: application/json; charset=utf-8`` (azure-iot-hub) and ``application/json``:
  JSON is UTF-8 by definition (RFC 8259), the parameter means nothing.
- ARM paths compare case-insensitively, as ARM resolves them (they happen to be equal).
- ``x-ms-max-item-count``: dpskit asks for pages of 100 on every query; the SDKs leave the
  page size to the service unless ``top``/``max_item_count`` is given. A page-size hint.
- api-versions: equal, except ARM provisioningServices, where both versions must be in
  ``DPS_ARM_API_VERSIONS`` (see there).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dpskit
from conftest import LocalToken

pytest.importorskip("azure.mgmt.iothub", reason="azure-mgmt-iothub is not installed")
pytest.importorskip(
    "azure.mgmt.iothubprovisioningservices",
    reason="azure-mgmt-iothubprovisioningservices is not installed",
)
pytest.importorskip("azure.iot.deviceprovisioning", reason="azure-iot-deviceprovisioning is absent")
pytest.importorskip("azure.iot.hub", reason="azure-iot-hub is not installed")

from azure.core import MatchConditions
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from azure.iot.hub import IoTHubRegistryManager  # type: ignore[import-untyped]
from azure.iot.hub.models import (  # type: ignore[import-untyped]
    CloudToDeviceMethod,
    QuerySpecification,
    Twin,
    TwinProperties,
)
from azure.mgmt.iothub import IotHubClient
from azure.mgmt.iothub.models import IotHubDescription, IotHubProperties, IotHubSkuInfo
from azure.mgmt.iothubprovisioningservices import IotDpsClient
from azure.mgmt.iothubprovisioningservices import models as dps_models
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

RG = dpskit.LocalCloud.resource_group

#: ARM ``Microsoft.Devices/provisioningServices`` api-versions the two sides may use: dpskit
#: keeps 2022-02-05, the GA version in azure-rest-api-specs' ``stable`` folder, which Azure has
#: served for years; azure-mgmt-iothubprovisioningservices 2.1 defaults to 2026-11-01, which is
#: not in that folder yet. The request bodies compared here have the same shape in both.
DPS_ARM_API_VERSIONS = {"2022-02-05", "2026-11-01"}

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

Request = dpskit.RecordedRequest


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


@pytest.fixture(scope="module")
def trust(cloud: dpskit.LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("parity") / "emulator-ca.pem"
    path.write_text(cloud.trust_pem)
    return str(path)


@pytest.fixture(scope="module")
def azure(cloud: dpskit.LocalCloud) -> dpskit.AzureCloud:
    return dpskit.AzureCloud(
        cloud.subscription_id,
        RG,
        "local-token",
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )


@pytest.fixture(scope="module")
def hub_mgmt(cloud: dpskit.LocalCloud, trust: str) -> IotHubClient:
    return IotHubClient(
        LocalToken(), cloud.subscription_id, base_url=cloud.arm_endpoint, connection_verify=trust
    )


@pytest.fixture(scope="module")
def dps_mgmt(cloud: dpskit.LocalCloud, trust: str) -> IotDpsClient:
    return IotDpsClient(
        LocalToken(), cloud.subscription_id, base_url=cloud.arm_endpoint, connection_verify=trust
    )


def _registry(hub: dpskit.Hub, trust: str) -> Any:
    """azure-iot-hub's registry manager for ``hub``, from its connection string alone: it calls
    ``https://{HostName}`` as on Azure, which names the web port when 443 could not be bound."""
    manager = IoTHubRegistryManager.from_connection_string(hub.connection_string)
    manager.protocol.config.connection.verify = trust
    return manager


def _provisioning(dps: dpskit.Dps, trust: str) -> DeviceProvisioningClient:
    return DeviceProvisioningClient.from_connection_string(
        dps.service_connection_string, connection_verify=trust
    )


# -- recording and comparing -----------------------------------------------------------------


def _record(cloud: dpskit.LocalCloud, action: Callable[[], object]) -> list[Request]:
    with cloud.record_requests() as recording:
        action()
    assert recording.dropped == 0
    return recording.requests


def _pick(requests: list[Request], method: str, path_end: str) -> Request:
    """The first ``method`` request whose path ends with ``path_end`` (case-insensitively)."""
    found = [
        r for r in requests if r.method == method and r.path.lower().endswith(path_end.lower())
    ]
    assert found, f"no {method} …{path_end} among {[str(r) for r in requests]}"
    return found[0]


def _certificate_der(text: str) -> bytes:
    """The DER of a certificate sent as PEM text, base64 of PEM or base64 of DER."""
    if "-----BEGIN" in text:
        return x509.load_pem_x509_certificate(text.encode()).public_bytes(Encoding.DER)
    raw = base64.b64decode(text, validate=True)
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)


def _body(value: Any, *, forgive: frozenset[str] = frozenset()) -> Any:
    """``value`` with certificates as DER and the ``forgive``n top-level fields masked."""
    if isinstance(value, dict):
        return {
            k: "<differs>"
            if k in forgive
            else _certificate_der(v)
            if k == "certificate" and isinstance(v, str)
            else _body(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_body(v) for v in value]
    return value


def _if_match(request: Request) -> str | None:
    """``If-Match`` with the etag's value masked and its form kept."""
    value = request.header("if-match")
    if value is None:
        return None
    if value in ("*", '"*"'):
        return "*"
    return '"etag"' if len(value) > 1 and value[0] == value[-1] == '"' else "etag"


def _media_type(request: Request) -> str | None:
    value = request.header("content-type")
    if value is None:
        return None
    parts = [p.strip().lower() for p in value.split(";")]
    return ";".join(p for p in parts if p and p != "charset=utf-8")


def _assert_parity(
    sdk: Request,
    ours: Request,
    *,
    api_versions: set[str] | None = None,
    forgive: frozenset[str] = frozenset(),
    status: int | None = None,
) -> None:
    """The two requests agree on everything that matters (see the module's docstring)."""
    where = (
        f"\n  SDK:    {sdk} {sdk.headers} {sdk.body}\n  dpskit: {ours} {ours.headers} {ours.body}"
    )
    if status is None:
        assert 200 <= sdk.status < 300, where
        assert 200 <= ours.status < 300, where
    else:
        assert sdk.status == ours.status == status, where
    assert ours.method == sdk.method, where
    assert ours.api == sdk.api, where
    if sdk.api == "arm":
        assert ours.path.lower() == sdk.path.lower(), where
    else:
        assert ours.path == sdk.path, where
    assert ours.header("accept") == sdk.header("accept"), where
    if api_versions is None:
        assert ours.api_version == sdk.api_version, where
    else:
        assert {ours.api_version, sdk.api_version} <= api_versions, where
    assert _if_match(ours) == _if_match(sdk), where
    assert _media_type(ours) == _media_type(sdk), where
    assert ours.body_kind == sdk.body_kind, where
    assert _body(ours.body, forgive=forgive) == _body(sdk.body, forgive=forgive), where


def test_the_comparison_can_fail() -> None:
    """Each forgiven difference is narrow: a neighbouring real difference still fails."""
    base: dict[str, Any] = {
        "sequence": 0,
        "at": 0.0,
        "api": "hub",
        "method": "PATCH",
        "path": "/twins/d",
        "query": [("api-version", "2021-04-12")],
        "headers": [("if-match", "*"), ("content-type", "application/json")],
        "body_kind": "json",
        "body": {"tags": {"a": 1}},
        "body_size": 1,
        "status": 200,
    }

    def request(**change: Any) -> Request:
        # The record as the native module hands it over, in RecordedRequest's field order.
        return Request._from_native(tuple({**base, **change}.values()))

    ours = request()
    quoted = request(
        headers=[("if-match", '"*"'), ("content-type", "application/json; charset=utf-8")]
    )
    _assert_parity(quoted, ours)
    for different in [
        request(method="PUT"),
        request(path="/twins/D"),
        request(query=[("api-version", "2020-03-13")]),
        request(headers=[("if-match", '"abc"'), ("content-type", "application/json")]),
        request(headers=[("if-match", "*"), ("content-type", "text/plain")]),
        request(body={"tags": {"a": 2}}),
        request(status=412),
    ]:
        with pytest.raises(AssertionError):
            _assert_parity(different, ours)
    pem = dpskit.CertificateAuthority.create_root("Parity Probe").certificate.pem
    other = dpskit.CertificateAuthority.create_root("Parity Probe").certificate.pem
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    assert _body({"certificate": pem}) == _body({"certificate": base64.b64encode(der).decode()})
    assert _body({"certificate": base64.b64encode(pem.encode()).decode()}) == _body(
        {"certificate": pem}
    )
    assert _body({"certificate": pem}) != _body({"certificate": other})


# -- ARM: IoT hubs -----------------------------------------------------------------------------


def test_hub_create_get_list_keys_delete(
    cloud: dpskit.LocalCloud, azure: dpskit.AzureCloud, hub_mgmt: IotHubClient
) -> None:
    name = "parity-hub-arm"
    resource = f"/IotHubs/{name}"
    description = IotHubDescription(
        location="westeurope",
        sku=IotHubSkuInfo(name="S1", capacity=1),
        properties=IotHubProperties(),
    )
    sdk = _record(
        cloud,
        lambda: hub_mgmt.iot_hub_resource.begin_create_or_update(RG, name, description).result(),
    )
    cloud.delete_hub(name)
    ours = _record(cloud, lambda: azure.create_hub(name, "westeurope"))
    _assert_parity(_pick(sdk, "PUT", resource), _pick(ours, "PUT", resource))

    sdk = _record(cloud, lambda: hub_mgmt.iot_hub_resource.get(RG, name))
    ours = _record(cloud, lambda: azure.hub(name))
    _assert_parity(_pick(sdk, "GET", resource), _pick(ours, "GET", resource))

    sdk = _record(cloud, lambda: list(hub_mgmt.iot_hub_resource.list_by_resource_group(RG)))
    ours = _record(cloud, azure.hubs)
    _assert_parity(_pick(sdk, "GET", "/IotHubs"), _pick(ours, "GET", "/IotHubs"))

    keys = f"{resource}/IotHubKeys/iothubowner/listkeys"
    sdk = _record(
        cloud, lambda: hub_mgmt.iot_hub_resource.get_keys_for_key_name(RG, name, "iothubowner")
    )
    ours = _record(cloud, lambda: azure.hub(name))
    _assert_parity(_pick(sdk, "POST", keys), _pick(ours, "POST", keys))

    # The daily meter on Azure: the quotaMetrics the SDK lists, read by Hub.usage().
    metrics = f"{resource}/quotaMetrics"
    sdk_metrics: list[Any] = []
    sdk = _record(
        cloud,
        lambda: sdk_metrics.extend(hub_mgmt.iot_hub_resource.get_quota_metrics(RG, name)),
    )
    usages: list[dpskit.HubUsage] = []
    ours = _record(cloud, lambda: usages.append(azure.hub(name).usage()))
    _assert_parity(_pick(sdk, "GET", metrics), _pick(ours, "GET", metrics))
    by_name = {m.name: (m.current_value, m.max_value) for m in sdk_metrics}
    assert by_name == {"TotalMessages": (0, 400_000), "TotalDeviceCount": (0, 1_000_000)}
    [usage] = usages
    assert (usage.sku, usage.units, usage.daily_quota, usage.messages_used) == ("S1", 1, 400_000, 0)
    assert (usage.meter_block_bytes, usage.throttled, usage.quota_refusals) == (4096, None, None)
    assert usage.presets

    sdk = _record(cloud, lambda: hub_mgmt.iot_hub_resource.begin_delete(RG, name).result())
    cloud.create_hub(name)
    ours = _record(cloud, lambda: azure.delete_hub(name))
    _assert_parity(_pick(sdk, "DELETE", resource), _pick(ours, "DELETE", resource))


# -- ARM: provisioning services and linked hubs ------------------------------------------------


def test_dps_create_get_list_keys_delete(
    cloud: dpskit.LocalCloud, azure: dpskit.AzureCloud, dps_mgmt: IotDpsClient
) -> None:
    name = "parity-dps-arm"
    resource = f"/provisioningServices/{name}"
    versions = DPS_ARM_API_VERSIONS
    description = dps_models.ProvisioningServiceDescription(
        location="westeurope",
        sku=dps_models.IotDpsSkuInfo(name="S1", capacity=1),
        properties=dps_models.IotDpsPropertiesDescription(),
    )
    iot_dps = dps_mgmt.iot_dps_resource
    sdk = _record(cloud, lambda: iot_dps.begin_create_or_update(RG, name, description).result())
    cloud.delete_dps(name)
    ours = _record(cloud, lambda: azure.create_dps(name, "westeurope"))
    put = _pick(ours, "PUT", resource)
    _assert_parity(_pick(sdk, "PUT", resource), put, api_versions=versions)
    # dpskit's own version is the one it documents.
    assert put.api_version == "2022-02-05"

    sdk = _record(cloud, lambda: iot_dps.get(name, RG))
    ours = _record(cloud, lambda: azure.dps(name))
    _assert_parity(_pick(sdk, "GET", resource), _pick(ours, "GET", resource), api_versions=versions)

    sdk = _record(cloud, lambda: list(iot_dps.list_by_resource_group(RG)))
    ours = _record(cloud, azure.all_dps)
    collection = "/provisioningServices"
    _assert_parity(
        _pick(sdk, "GET", collection), _pick(ours, "GET", collection), api_versions=versions
    )

    keys = f"{resource}/keys/provisioningserviceowner/listkeys"
    sdk = _record(
        cloud, lambda: iot_dps.list_keys_for_key_name(name, "provisioningserviceowner", RG)
    )
    ours = _record(cloud, lambda: azure.dps(name))
    _assert_parity(_pick(sdk, "POST", keys), _pick(ours, "POST", keys), api_versions=versions)

    sdk = _record(cloud, lambda: iot_dps.begin_delete(name, RG).result())
    cloud.create_dps(name)
    ours = _record(cloud, lambda: azure.delete_dps(name))
    _assert_parity(
        _pick(sdk, "DELETE", resource), _pick(ours, "DELETE", resource), api_versions=versions
    )


def test_linking_a_hub(
    cloud: dpskit.LocalCloud,
    azure: dpskit.AzureCloud,
    dps_mgmt: IotDpsClient,
    hub_mgmt: IotHubClient,
) -> None:
    dps_name, hub_name = "parity-dps-link", "parity-hub-link"
    hub = cloud.create_hub(hub_name)
    cloud.create_dps(dps_name)

    def link_with_the_sdk() -> None:
        # What `az iot dps linked-hub create` does with the management SDK: read the DPS, add
        # the hub's owner connection string, write the resource back.
        description = dps_mgmt.iot_dps_resource.get(dps_name, RG)
        keys = hub_mgmt.iot_hub_resource.get_keys_for_key_name(RG, hub_name, "iothubowner")
        link = dps_models.IotHubDefinitionDescription(
            connection_string=f"HostName={hub.host_name};SharedAccessKeyName=iothubowner;"
            f"SharedAccessKey={keys.primary_key}",
            location=hub.location,
            allocation_weight=3,
            apply_allocation_policy=True,
        )
        assert description.properties is not None
        description.properties.iot_hubs = [*(description.properties.iot_hubs or []), link]
        dps_mgmt.iot_dps_resource.begin_create_or_update(RG, dps_name, description).result()

    resource = f"/provisioningServices/{dps_name}"
    sdk = _record(cloud, link_with_the_sdk)
    # The same DPS, fresh, for dpskit (nothing else about it differs but its etag).
    cloud.delete_dps(dps_name)
    cloud.create_dps(dps_name)
    ours = _record(cloud, lambda: azure.link_hub(dps_name, hub_name, allocation_weight=3))
    _assert_parity(
        _pick(sdk, "PUT", resource),
        _pick(ours, "PUT", resource),
        api_versions=DPS_ARM_API_VERSIONS,
        forgive=frozenset({"etag"}),
    )
    assert [link.hub for link in cloud.dps(dps_name).linked_hubs()] == [hub_name]


# -- ARM: CA certificates and proof of possession ----------------------------------------------


def test_ca_certificate_upload_code_verify_get_list_delete(
    cloud: dpskit.LocalCloud, azure: dpskit.AzureCloud, dps_mgmt: IotDpsClient
) -> None:
    dps_name, name = "parity-dps-certs", "root"
    cloud.create_dps(dps_name)
    root = dpskit.CertificateAuthority.create_root("Parity Root")
    certificates = dps_mgmt.dps_certificate
    resource = f"/provisioningServices/{dps_name}/certificates/{name}"
    versions = DPS_ARM_API_VERSIONS

    def upload(etag: str | None) -> Any:
        body = dps_models.CertificateResponse(
            properties=dps_models.CertificateProperties(
                certificate=root.certificate.pem.encode(), is_verified=False
            )
        )
        if etag is None:
            return certificates.create_or_update(RG, dps_name, name, body)
        return certificates.create_or_update(
            RG, dps_name, name, body, etag=etag, match_condition=MatchConditions.IfNotModified
        )

    def proof_with_the_sdk() -> dict[str, list[Request]]:
        steps: dict[str, list[Request]] = {}
        created: list[Any] = []
        steps["upload"] = _record(cloud, lambda: created.append(upload(None)))
        # A replace carries the current etag.
        steps["replace"] = _record(cloud, lambda: created.append(upload(created[-1].etag)))
        coded: list[Any] = []
        steps["code"] = _record(
            cloud,
            lambda: coded.append(
                certificates.generate_verification_code(
                    name,
                    RG,
                    dps_name,
                    etag=created[-1].etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            ),
        )
        code = coded[0].properties.verification_code
        verification = root.create_verification_certificate(code)
        verified: list[Any] = []
        steps["verify"] = _record(
            cloud,
            lambda: verified.append(
                certificates.verify_certificate(
                    name,
                    RG,
                    dps_name,
                    dps_models.VerificationCodeRequest(certificate=verification.pem),
                    etag=coded[0].etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            ),
        )
        steps["get"] = _record(cloud, lambda: certificates.get(name, RG, dps_name))
        steps["list"] = _record(cloud, lambda: certificates.list(RG, dps_name))
        steps["delete"] = _record(
            cloud,
            lambda: certificates.delete(
                RG,
                dps_name,
                name,
                etag=verified[0].etag,
                match_condition=MatchConditions.IfNotModified,
            ),
        )
        return steps

    def proof_with_dpskit() -> dict[str, list[Request]]:
        dps = azure.dps(dps_name)
        steps: dict[str, list[Request]] = {}
        steps["upload"] = _record(cloud, lambda: dps.upload_ca_certificate(name, root))
        steps["replace"] = _record(cloud, lambda: dps.upload_ca_certificate(name, root))
        codes: list[str] = []
        steps["code"] = _record(cloud, lambda: codes.append(dps.generate_verification_code(name)))
        verification = root.create_verification_certificate(codes[0])
        steps["verify"] = _record(cloud, lambda: dps.verify_certificate(name, verification))
        steps["get"] = _record(cloud, lambda: dps.ca_certificate(name))
        steps["list"] = _record(cloud, dps.ca_certificates)
        steps["delete"] = _record(cloud, lambda: dps.delete_ca_certificate(name))
        return steps

    sdk, ours = proof_with_the_sdk(), proof_with_dpskit()
    for step, method, path in [
        ("upload", "PUT", resource),
        ("replace", "PUT", resource),
        ("code", "POST", f"{resource}/generateVerificationCode"),
        ("verify", "POST", f"{resource}/verify"),
        ("get", "GET", resource),
        ("list", "GET", f"/provisioningServices/{dps_name}/certificates"),
        ("delete", "DELETE", resource),
    ]:
        # Each side signed a verification certificate for its own code: those must differ
        # (the emulator accepted both, so both had the right CN and signer).
        _assert_parity(
            _pick(sdk[step], method, path),
            _pick(ours[step], method, path),
            api_versions=versions,
            forgive=frozenset({"certificate"}) if step == "verify" else frozenset(),
        )
    assert not cloud.dps(dps_name).ca_certificates()


# -- the DPS service API -----------------------------------------------------------------------


def _key() -> str:
    return base64.b64encode(bytes(range(32))).decode()


def test_enrollment_groups_create_get_query_update_attestation_delete(
    cloud: dpskit.LocalCloud, trust: str
) -> None:
    dps = cloud.create_dps("parity-dps-groups")
    hub = cloud.create_hub("parity-hub-groups")
    cloud.link_hub(dps, hub)
    root = dpskit.CertificateAuthority.create_root("Parity Group Root")
    dps.upload_ca_certificate("root", root, verified=True)
    client = _provisioning(dps, trust)
    groups = client.enrollment_group
    reprovision = {"updateHubAssignment": True, "migrateDeviceData": True}
    x509_group = {
        "enrollmentGroupId": "x509-group",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root"}}},
        "provisioningStatus": "enabled",
        "reprovisionPolicy": reprovision,
        "allocationPolicy": "hashed",
        "iotHubs": [hub.host_name],
        "initialTwin": {"tags": {"site": "lab"}, "properties": {"desired": {"interval": 5}}},
    }
    key_group = {
        "enrollmentGroupId": "key-group",
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": _key(), "secondaryKey": _key()},
        },
        "provisioningStatus": "enabled",
        "reprovisionPolicy": reprovision,
    }

    def create_with_dpskit() -> None:
        dps.create_enrollment_group(
            "x509-group",
            ca_reference="root",
            allocation_policy="hashed",
            hubs=[hub],
            initial_twin=x509_group["initialTwin"],  # type: ignore[arg-type]
        )

    for group, create in [
        (x509_group, create_with_dpskit),
        (
            key_group,
            lambda: dps.create_enrollment_group(
                "key-group", symmetric_key=True, primary_key=_key(), secondary_key=_key()
            ),
        ),
    ]:
        group_id = str(group["enrollmentGroupId"])
        path = f"/enrollmentGroups/{group_id}"
        sdk = _record(cloud, lambda g=group, i=group_id: groups.create_or_update(i, g))  # type: ignore[misc]
        dps.delete_enrollment_group(group_id)
        ours = _record(cloud, create)
        _assert_parity(_pick(sdk, "PUT", path), _pick(ours, "PUT", path))

        sdk = _record(cloud, lambda i=group_id: groups.get(i))  # type: ignore[misc]
        ours = _record(cloud, lambda i=group_id: dps.enrollment_group(i))  # type: ignore[misc]
        _assert_parity(_pick(sdk, "GET", path), _pick(ours, "GET", path))

    attestation = "/enrollmentGroups/key-group/attestationmechanism"
    sdk = _record(cloud, lambda: groups.get_attestation_mechanism("key-group"))
    ours = _record(cloud, lambda: dps.update_enrollment_group("key-group"))
    _assert_parity(_pick(sdk, "POST", attestation), _pick(ours, "POST", attestation))

    query = "/enrollmentGroups/query"
    sdk = _record(cloud, lambda: list(groups.query({"query": "SELECT *"})))
    ours = _record(cloud, dps.enrollment_groups)
    _assert_parity(_pick(sdk, "POST", query), _pick(ours, "POST", query))

    # An update: the group read back, changed, written with its etag. What the SDK user sends
    # back is the record without the service's timestamps, as `az iot dps enrollment-group
    # update` does; dpskit sends the settings and the attestation it read.
    def update_with_the_sdk() -> None:
        record = groups.get("x509-group")
        etag = record.pop("etag")
        for read_only in ("createdDateTimeUtc", "lastUpdatedDateTimeUtc"):
            record.pop(read_only)
        record["provisioningStatus"] = "disabled"
        groups.create_or_update("x509-group", record, if_match=etag)

    path = "/enrollmentGroups/x509-group"
    sdk = _record(cloud, update_with_the_sdk)
    dps.update_enrollment_group("x509-group", provisioning_status="enabled")
    ours = _record(
        cloud, lambda: dps.update_enrollment_group("x509-group", provisioning_status="disabled")
    )
    _assert_parity(_pick(sdk, "PUT", path), _pick(ours, "PUT", path))

    def delete_with_the_sdk() -> None:
        groups.delete("x509-group", if_match=groups.get("x509-group")["etag"])

    sdk = _record(cloud, delete_with_the_sdk)
    create_with_dpskit()
    ours = _record(cloud, lambda: dps.delete_enrollment_group("x509-group"))
    _assert_parity(_pick(sdk, "DELETE", path), _pick(ours, "DELETE", path))


def test_individual_enrollments_and_registrations(cloud: dpskit.LocalCloud, trust: str) -> None:
    dps = cloud.create_dps("parity-dps-enrollments")
    hub = cloud.create_hub("parity-hub-enrollments")
    cloud.link_hub(dps, hub)
    client = _provisioning(dps, trust)
    enrollments = client.enrollment
    device = dpskit.CertificateAuthority.create_root("Parity Issuer").issue_device("x509-device")
    reprovision = {"updateHubAssignment": True, "migrateDeviceData": True}
    cases: list[tuple[dict[str, Any], Callable[[], object]]] = [
        (
            {
                "registrationId": "x509-device",
                "deviceId": "x509-device-id",
                "attestation": {
                    "type": "x509",
                    "x509": {
                        "clientCertificates": {"primary": {"certificate": device.certificate.pem}}
                    },
                },
                "provisioningStatus": "enabled",
                "reprovisionPolicy": reprovision,
            },
            lambda: dps.create_enrollment(
                "x509-device", certificate=device, device_id="x509-device-id"
            ),
        ),
        (
            {
                "registrationId": "key-device",
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": _key(), "secondaryKey": _key()},
                },
                "provisioningStatus": "enabled",
                "reprovisionPolicy": reprovision,
            },
            lambda: dps.create_enrollment(
                "key-device", symmetric_key=True, primary_key=_key(), secondary_key=_key()
            ),
        ),
    ]
    for enrollment, create in cases:
        registration_id = str(enrollment["registrationId"])
        path = f"/enrollments/{registration_id}"
        sdk = _record(
            cloud,
            lambda e=enrollment, i=registration_id: enrollments.create_or_update(i, e),  # type: ignore[misc]
        )
        dps.delete_enrollment(registration_id)
        ours = _record(cloud, create)
        _assert_parity(_pick(sdk, "PUT", path), _pick(ours, "PUT", path))

        sdk = _record(cloud, lambda i=registration_id: enrollments.get(i))  # type: ignore[misc]
        ours = _record(cloud, lambda i=registration_id: dps.enrollment(i))  # type: ignore[misc]
        _assert_parity(_pick(sdk, "GET", path), _pick(ours, "GET", path))

    query = "/enrollments/query"
    sdk = _record(cloud, lambda: list(enrollments.query({"query": "SELECT *"})))
    ours = _record(cloud, dps.enrollments)
    _assert_parity(_pick(sdk, "POST", query), _pick(ours, "POST", query))

    # Registrations: the key device registers (dpskit's device client), then its state is read,
    # listed through a group's query, and deleted.
    def register() -> None:
        dpskit.provision_sync(
            dps.device_endpoint,
            id_scope=dps.id_scope,
            registration_id="key-device",
            symmetric_key=_key(),
            trust=cloud.trust_pem,
        )

    register()
    registrations = client.device_registration_state
    state = "/registrations/key-device"
    sdk = _record(cloud, lambda: registrations.get("key-device"))
    ours = _record(cloud, dps.registrations)
    _assert_parity(_pick(sdk, "GET", state), _pick(ours, "GET", state))

    sdk = _record(cloud, lambda: registrations.delete("key-device"))
    register()
    ours = _record(cloud, lambda: dps.delete_registration("key-device"))
    _assert_parity(_pick(sdk, "DELETE", state), _pick(ours, "DELETE", state))

    dps.create_enrollment_group("parity-group", symmetric_key=True)
    group_query = "/registrations/parity-group/query"
    sdk = _record(cloud, lambda: list(registrations.query("parity-group")))
    ours = _record(cloud, lambda: dps.registrations("parity-group"))
    _assert_parity(_pick(sdk, "POST", group_query), _pick(ours, "POST", group_query))

    path = "/enrollments/key-device"
    sdk = _record(
        cloud,
        lambda: enrollments.delete("key-device", if_match=enrollments.get("key-device")["etag"]),
    )
    cases[1][1]()
    ours = _record(cloud, lambda: dps.delete_enrollment("key-device"))
    _assert_parity(_pick(sdk, "DELETE", path), _pick(ours, "DELETE", path))


# -- the hub service API -----------------------------------------------------------------------


def test_device_identities_twins_methods_and_queries(cloud: dpskit.LocalCloud, trust: str) -> None:
    hub = cloud.create_hub("parity-hub-service")
    registry = _registry(hub, trust)
    root = dpskit.CertificateAuthority.create_root("Parity Device Root")
    thumbprint = root.certificate.thumbprint_sha1

    path = "/devices/sas-device"
    sdk = _record(
        cloud, lambda: registry.create_device_with_sas("sas-device", _key(), _key(), "enabled")
    )
    hub.delete_device("sas-device")
    ours = _record(
        cloud,
        lambda: hub.create_device(
            "sas-device", symmetric_key=True, primary_key=_key(), secondary_key=_key()
        ),
    )
    _assert_parity(_pick(sdk, "PUT", path), _pick(ours, "PUT", path))

    x509_path = "/devices/x509-device"
    sdk = _record(
        cloud, lambda: registry.create_device_with_x509("x509-device", thumbprint, None, "enabled")
    )
    hub.delete_device("x509-device")
    ours = _record(cloud, lambda: hub.create_device("x509-device", certificate=root.certificate))
    _assert_parity(_pick(sdk, "PUT", x509_path), _pick(ours, "PUT", x509_path))

    sdk = _record(cloud, lambda: registry.get_device("sas-device"))
    ours = _record(cloud, lambda: hub.device("sas-device"))
    _assert_parity(_pick(sdk, "GET", path), _pick(ours, "GET", path))

    twin = "/twins/sas-device"
    sdk = _record(cloud, lambda: registry.get_twin("sas-device"))
    ours = _record(cloud, lambda: hub.get_twin("sas-device"))
    _assert_parity(_pick(sdk, "GET", twin), _pick(ours, "GET", twin))

    desired = Twin(properties=TwinProperties(desired={"interval": 10, "gone": None}))
    sdk = _record(cloud, lambda: registry.update_twin("sas-device", desired))
    ours = _record(cloud, lambda: hub.update_desired("sas-device", {"interval": 10, "gone": None}))
    _assert_parity(_pick(sdk, "PATCH", twin), _pick(ours, "PATCH", twin))

    sdk = _record(cloud, lambda: registry.update_twin("sas-device", Twin(tags={"site": "lab"})))
    ours = _record(cloud, lambda: hub.update_tags("sas-device", {"site": "lab"}))
    _assert_parity(_pick(sdk, "PATCH", twin), _pick(ours, "PATCH", twin))

    query = "/devices/query"
    sdk = _record(
        cloud, lambda: registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"))
    )
    ours = _record(cloud, hub.devices)
    _assert_parity(_pick(sdk, "POST", query), _pick(ours, "POST", query))
    where = "SELECT * FROM devices WHERE tags.site = 'lab'"
    sdk = _record(cloud, lambda: registry.query_iot_hub(QuerySpecification(query=where)))
    ours = _record(cloud, lambda: hub.query(where))
    _assert_parity(_pick(sdk, "POST", query), _pick(ours, "POST", query))

    # The device is offline: IoT Hub answers 404103 to both, after reading the same request.
    methods = "/twins/sas-device/methods"
    request = CloudToDeviceMethod(
        method_name="reboot",
        payload={"delay": 1},
        response_timeout_in_seconds=30,
        connect_timeout_in_seconds=0,
    )

    def invoke_with_the_sdk() -> None:
        with pytest.raises(Exception, match="Not Found"):
            registry.invoke_device_method("sas-device", request)

    def invoke_with_dpskit() -> None:
        with pytest.raises(dpskit.NotFoundError):
            hub.invoke_method("sas-device", "reboot", {"delay": 1}, timeout=30)

    sdk = _record(cloud, invoke_with_the_sdk)
    ours = _record(cloud, invoke_with_dpskit)
    _assert_parity(_pick(sdk, "POST", methods), _pick(ours, "POST", methods), status=404)

    sdk = _record(cloud, lambda: registry.delete_device("sas-device"))
    hub.create_device("sas-device", symmetric_key=True)
    ours = _record(cloud, lambda: hub.delete_device("sas-device"))
    _assert_parity(_pick(sdk, "DELETE", path), _pick(ours, "DELETE", path))


def test_the_recorder_keeps_no_secrets(cloud: dpskit.LocalCloud, trust: str) -> None:
    """What a recording holds can be printed: no keys, no tokens, no Authorization header."""
    hub = cloud.create_hub("parity-hub-secrets")
    dps = cloud.create_dps("parity-dps-secrets")
    with cloud.record_requests() as recording:
        cloud.link_hub(dps, hub)
        hub.create_device("secret-device", symmetric_key=True, primary_key=_key())
        dps.create_enrollment("secret-enrollment", symmetric_key=True, primary_key=_key())
        _registry(hub, trust).get_device("secret-device")
    everything = repr(recording.requests)
    hub_key = hub.connection_string.split("SharedAccessKey=")[1]
    dps_key = dps.service_connection_string.split("SharedAccessKey=")[1]
    for secret in [_key(), hub_key, dps_key, "SharedAccessSignature", "local-token"]:
        assert secret not in everything
    assert all("authorization" not in r.headers for r in recording.requests)
    assert {r.api for r in recording.requests} == {"arm", "hub", "dps"}
    assert "<redacted>" in everything
    assert recording.dropped == 0
    assert "requests=" in repr(recording)
