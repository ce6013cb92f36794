"""Azure Device Registry on the local cloud, through the same ARM and DPS service calls as
Azure: namespaces with their root CA, credential policies with their issuing CA, DPS and hub
links, enrollments naming a policy, the cloud's clock; the refusals Azure makes; the ARM
answers against Azure's published examples (``tests/data/deviceregistry``); dpskit's ARM
requests against the documented ones; and the official DPS service SDK writing and reading
``credentialPolicyName``."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import dpskit
from dpskit._native import generate_symmetric_key
from dpskit.errors import ConfigError, ConflictError, ServiceError

DATA = Path(__file__).parent / "data" / "deviceregistry"
API = "2025-11-01-preview"

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


def _arm(
    cloud: dpskit.LocalCloud, method: str, path: str, body: Any = None, api: str = API
) -> tuple[int, Any]:
    """One raw ARM request to the emulator (what an SDK or ``az rest`` would send)."""
    context = ssl.create_default_context(cadata=cloud.trust_pem)
    data = json.dumps(body).encode() if body is not None else None
    url = f"{cloud.arm_endpoint}{path}"
    url += ("&" if "?" in url else "?") + f"api-version={api}"
    request = urllib.request.Request(  # noqa: S310 (the emulator's https URL)
        url,
        data=data,
        method=method,
        headers={"Authorization": "Bearer local", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context) as answer:  # noqa: S310
            text = answer.read()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as refused:
        text = refused.read()
        return refused.code, json.loads(text) if text else None


def _namespaces(cloud: dpskit.LocalCloud) -> str:
    return (
        f"/subscriptions/{cloud.subscription_id}/resourceGroups/{cloud.resource_group}"
        "/providers/Microsoft.DeviceRegistry/namespaces"
    )


def _same_shape(ours: Any, example: Any, where: str = "") -> None:
    """Every member of Azure's example is in ours, with the same JSON type (map keys that are
    names the caller chose, such as endpoint names, are not compared)."""
    if isinstance(example, dict):
        assert isinstance(ours, dict), f"{where}: {ours!r} is not an object"
        for key, value in example.items():
            assert key in ours, f"{where}.{key} is missing from {ours!r}"
            _same_shape(ours[key], value, f"{where}.{key}")
    elif isinstance(example, list):
        assert isinstance(ours, list), f"{where}: {ours!r} is not an array"
    else:
        assert type(ours) is type(example), f"{where}: {ours!r} vs Azure's {example!r}"


def test_a_namespace_has_a_root_ca_and_its_policies_issuing_cas(cloud: dpskit.LocalCloud) -> None:
    namespace = cloud.create_device_registry_namespace("adr-one", "northeurope")
    assert namespace.name == "adr-one"
    assert namespace.location == "northeurope"
    assert namespace.resource_id.endswith("/providers/Microsoft.DeviceRegistry/namespaces/adr-one")
    assert namespace.root_ca is not None
    assert namespace.root_ca.common_name == "adr-one Root CA"
    # Made once: asking again gives the same namespace and the same CA.
    again = cloud.create_device_registry_namespace("adr-one")
    assert again.uuid == namespace.uuid
    assert again.root_ca is not None
    assert again.root_ca.pem == namespace.root_ca.pem

    policy = namespace.create_policy("devices", validity_days=14)
    assert (policy.namespace, policy.name, policy.validity_days) == ("adr-one", "devices", 14)
    assert policy.key_type == "ECC"
    assert policy.issuing_ca is not None
    assert policy.issuing_ca.common_name == "adr-one devices Issuing CA"
    assert policy.subject == "CN=adr-one devices Issuing CA"
    assert policy.not_before is not None
    assert policy.not_after is not None
    assert timedelta(days=5 * 365) <= policy.not_after - policy.not_before
    dpskit.verify_chain(policy.issuing_ca, [], [namespace.root_ca])
    assert [p.name for p in namespace.policies()] == ["devices"]
    # A PUT of an existing policy changes what it issues, not its CA.
    changed = namespace.create_policy("devices", validity_days=30)
    assert changed.validity_days == 30
    assert changed.issuing_ca is not None
    assert changed.issuing_ca.pem == policy.issuing_ca.pem
    assert namespace.policy("devices").validity_days == 30
    assert "adr-one" in [n.name for n in cloud.device_registry_namespaces()]


@pytest.mark.parametrize("name", ["ab", "Upper-case", "-leading", "trailing-", "under_score"])
def test_namespace_names_azure_refuses_are_refused(cloud: dpskit.LocalCloud, name: str) -> None:
    with pytest.raises(ConfigError, match="namespace name"):
        cloud.create_device_registry_namespace(name)
    # The emulator refuses them too when a client skips the check.
    status, body = _arm(cloud, "PUT", f"{_namespaces(cloud)}/{name}", {"location": "westeurope"})
    assert status == 400, body
    assert body["code"] == "InvalidResourceName"


@pytest.mark.parametrize("days", [6, 91])
def test_a_validity_outside_7_to_90_days_is_refused(cloud: dpskit.LocalCloud, days: int) -> None:
    namespace = cloud.create_device_registry_namespace("adr-validity")
    with pytest.raises(ConfigError, match="7 to 90 days"):
        namespace.create_policy("pol", validity_days=days)
    status, body = _arm(
        cloud,
        "PUT",
        f"{_namespaces(cloud)}/adr-validity/credentials/default/policies/pol",
        {
            "properties": {
                "certificate": {
                    "certificateAuthorityConfiguration": {"keyType": "ECC"},
                    "leafCertificateConfiguration": {"validityPeriodInDays": days},
                }
            }
        },
    )
    assert status == 400, body
    assert "7 to 90" in body["message"]
    with pytest.raises(ConfigError, match="key type"):
        namespace.create_policy("pol", key_type="RSA")
    with pytest.raises(ConfigError, match="policy name"):
        namespace.create_policy("p_1")


def test_enrollments_name_a_policy_of_the_dps_namespace(cloud: dpskit.LocalCloud) -> None:
    dps = cloud.create_dps("dps-registry")
    hub = cloud.create_hub("hub-registry")
    cloud.link_hub(dps, hub)
    # No namespace yet: DPS refuses the reference with its own code and text.
    with pytest.raises(ServiceError) as refused:
        dps.create_enrollment_group("grp", symmetric_key=True, credential_policy="devices")
    assert refused.value.error_code == 400004
    assert "A Device Registry Namespace is required to be set on this DPS instance" in str(
        refused.value
    )

    namespace = cloud.create_device_registry_namespace("adr-dps")
    namespace.create_policy("devices")
    cloud.link_namespace(dps, namespace)
    cloud.link_namespace(hub, namespace)
    # A second namespace is refused for both.
    other = cloud.create_device_registry_namespace("adr-other")
    with pytest.raises(ConflictError):
        cloud.link_namespace(dps, other)
    with pytest.raises(ConflictError):
        cloud.link_namespace(hub, other)

    group = dps.create_enrollment_group("grp", symmetric_key=True, credential_policy="devices")
    assert group.credential_policy == "devices"
    assert group.credential_policy_namespace is None
    assert dps.enrollment_group("grp").credential_policy == "devices"
    assert [g.credential_policy for g in dps.enrollment_groups()] == ["devices"]
    # An update keeps the reference.
    updated = dps.update_enrollment_group("grp", provisioning_status="disabled")
    assert updated.credential_policy == "devices"

    enrollment = dps.create_enrollment("dev-1", symmetric_key=True, credential_policy="devices")
    assert enrollment.credential_policy == "devices"
    assert dps.enrollment("dev-1").credential_policy == "devices"
    plain = dps.create_enrollment("dev-2", symmetric_key=True)
    assert plain.credential_policy is None

    with pytest.raises(ServiceError) as unknown:
        dps.create_enrollment("dev-3", symmetric_key=True, credential_policy="nope")
    assert unknown.value.error_code == 400004
    assert "nope" in str(unknown.value)


def test_the_three_names_travel_together(cloud: dpskit.LocalCloud) -> None:
    dps = cloud.create_dps("dps-three")
    namespace = cloud.create_device_registry_namespace("adr-three")
    namespace.create_policy("pol")
    cloud.link_namespace(dps, namespace)
    rest = cloud._rest
    service = dps.service_connection_string
    attestation = {
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": generate_symmetric_key()},
    }
    names = {
        "namespaceName": "adr-three",
        "certificateAuthorityName": "default",
        "certificatePolicyName": "pol",
    }
    record = rest.put_enrollment_group(
        service, "grp3", {"enrollmentGroupId": "grp3", "attestation": attestation, **names}
    )
    reference = record.settings.credential_policy
    assert reference is not None
    assert (reference.policy, reference.namespace, reference.certificate_authority) == (
        "pol",
        "adr-three",
        "default",
    )
    group = dps.enrollment_group("grp3")
    assert (group.credential_policy, group.credential_policy_namespace) == ("pol", "adr-three")
    for partial in (
        {"namespaceName": "adr-three", "certificatePolicyName": "pol"},
        {"certificateAuthorityName": "default"},
        {**names, "credentialPolicyName": "pol"},
    ):
        with pytest.raises(ServiceError) as refused:
            rest.put_enrollment_group(
                service,
                "grp4",
                {"enrollmentGroupId": "grp4", "attestation": attestation, **partial},
            )
        assert refused.value.error_code == 400004
    with pytest.raises(ServiceError):
        rest.put_enrollment_group(
            service,
            "grp5",
            {
                "enrollmentGroupId": "grp5",
                "attestation": attestation,
                **names,
                "namespaceName": "adr-elsewhere",
            },
        )


def test_arm_shows_the_links_on_the_dps_and_the_hub(cloud: dpskit.LocalCloud) -> None:
    dps = cloud.create_dps("dps-links")
    hub = cloud.create_hub("hub-links")
    namespace = cloud.create_device_registry_namespace("adr-links")
    cloud.link_namespace(dps, namespace)
    cloud.link_namespace(hub, namespace)
    devices = (
        f"/subscriptions/{cloud.subscription_id}/resourceGroups/{cloud.resource_group}"
        "/providers/Microsoft.Devices"
    )
    _, dps_view = _arm(
        cloud, "GET", f"{devices}/provisioningServices/dps-links", api="2025-02-01-preview"
    )
    link = dps_view["properties"]["deviceRegistryNamespace"]
    assert link["resourceId"] == namespace.resource_id
    assert link["authenticationType"] == "SystemAssigned"
    _, hub_view = _arm(cloud, "GET", f"{devices}/IotHubs/hub-links", api="2025-08-01-preview")
    assert hub_view["properties"]["deviceRegistry"]["namespaceResourceId"] == namespace.resource_id
    _, ns_view = _arm(cloud, "GET", f"{_namespaces(cloud)}/adr-links")
    endpoint = ns_view["properties"]["messaging"]["endpoints"]["hub-links"]
    assert endpoint["endpointType"] == "Microsoft.Devices/IoTHubs"
    assert endpoint["address"] == f"https://{hub.host_name}"


def test_answers_have_the_shapes_of_azures_published_examples(cloud: dpskit.LocalCloud) -> None:
    example = json.loads((DATA / "Get_Namespace.json").read_text())
    name = example["parameters"]["namespaceName"]
    status, created = _arm(
        cloud, "PUT", f"{_namespaces(cloud)}/{name}", {"location": "North Europe"}
    )
    assert status == 201, created
    status, got = _arm(cloud, "GET", f"{_namespaces(cloud)}/{name}")
    assert status == 200
    expected = example["responses"]["200"]["body"]
    _same_shape(got, {**expected, "properties": {**expected["properties"], "messaging": {}}})
    assert got["type"] == expected["type"]
    assert got["identity"]["type"] == "SystemAssigned"
    assert got["location"] == "North Europe"

    update = json.loads((DATA / "Update_Credentials.json").read_text())
    status, credential = _arm(
        cloud,
        "PATCH",
        f"{_namespaces(cloud)}/{name}/credentials/default",
        update["parameters"]["properties"],
    )
    assert status == 200, credential
    # Tag names are the caller's (the example's response shows generated ones); the object
    # itself is compared.
    _same_shape(credential, {**update["responses"]["200"]["body"], "tags": {}})
    assert credential["type"] == "Microsoft.DeviceRegistry/namespaces/credentials"
    assert credential["name"] == "default"
    status, listed = _arm(cloud, "GET", f"{_namespaces(cloud)}/{name}/credentials")
    assert status == 200
    assert [c["name"] for c in listed["value"]] == ["default"]
    status, _ = _arm(cloud, "GET", f"{_namespaces(cloud)}/{name}/credentials/other")
    assert status == 404

    status, policy = _arm(
        cloud,
        "PUT",
        f"{_namespaces(cloud)}/{name}/credentials/default/policies/pol-1",
        {
            "location": "eastus2",
            "properties": {
                "certificate": {
                    "certificateAuthorityConfiguration": {"keyType": "ECC"},
                    "leafCertificateConfiguration": {"validityPeriodInDays": 30},
                }
            },
        },
    )
    assert status == 201, policy
    ca = policy["properties"]["certificate"]["certificateAuthorityConfiguration"]
    assert set(ca) == {"keyType", "subject", "validityNotBefore", "validityNotAfter"}
    assert policy["properties"]["provisioningState"] == "Succeeded"
    assert policy["type"] == "Microsoft.DeviceRegistry/namespaces/credentials/policies"
    status, _ = _arm(cloud, "POST", f"{_namespaces(cloud)}/{name}/credentials/default/synchronize")
    assert status == 200
    status, _ = _arm(cloud, "DELETE", f"{_namespaces(cloud)}/{name}")
    assert status == 200
    status, _ = _arm(cloud, "GET", f"{_namespaces(cloud)}/{name}")
    assert status == 404


def test_dpskit_sends_the_documented_arm_requests(cloud: dpskit.LocalCloud) -> None:
    """The requests the CLI's ``az iot adr ns create``/``policy create`` and ``--ns-resource-id``
    send (docs and research in ``issue20-wire.md`` §4.1), as the emulator recorded them."""
    dps = cloud.create_dps("dps-parity")
    with cloud.record_requests() as recording:
        namespace = cloud.create_device_registry_namespace("adr-parity", "eastus2")
        namespace.create_policy("pol", validity_days=10)
        cloud.link_namespace(dps, namespace)
    requests = recording.requests
    puts = [r for r in requests if r.method == "PUT"]
    assert [r.path.split("/providers/")[1] for r in puts] == [
        "Microsoft.DeviceRegistry/namespaces/adr-parity",
        "Microsoft.DeviceRegistry/namespaces/adr-parity/credentials/default/policies/pol",
        "Microsoft.Devices/provisioningServices/dps-parity",
    ]
    assert [r.api_version for r in puts] == [API, API, "2025-02-01-preview"]
    assert puts[0].body == {
        "location": "eastus2",
        "identity": {"type": "SystemAssigned"},
        "properties": {},
    }
    assert puts[1].body == {
        "location": "eastus2",
        "properties": {
            "certificate": {
                "certificateAuthorityConfiguration": {"keyType": "ECC"},
                "leafCertificateConfiguration": {"validityPeriodInDays": 10},
            }
        },
    }
    assert puts[2].body["properties"]["deviceRegistryNamespace"] == {
        "resourceId": namespace.resource_id,
        "authenticationType": "SystemAssigned",
    }
    assert all(r.header("authorization") is None for r in requests)


def test_the_clock_starts_where_asked_and_moves_forward(tmp_path: Path) -> None:
    start = datetime(2031, 5, 1, 12, 0, tzinfo=timezone.utc)
    with dpskit.LocalCloud(tmp_path / "state", port=0, clock=start) as cloud:
        assert abs(cloud.now() - start) < timedelta(minutes=1)
        moved = cloud.advance_time(days=2, hours=3)
        assert timedelta(days=2, hours=3) <= moved - start < timedelta(days=2, hours=3, minutes=1)
        assert abs(cloud.now() - moved) < timedelta(minutes=1)
        with pytest.raises(ConfigError):
            cloud.advance_time(seconds=-1)
        # Certificates are made at the cloud's now.
        namespace = cloud.create_device_registry_namespace("adr-clock")
        policy = namespace.create_policy("pol")
        assert policy.not_before is not None
        assert abs(policy.not_before - (moved - timedelta(minutes=5))) < timedelta(minutes=2)
    # A kept folder keeps its clock; it never goes back.
    with dpskit.LocalCloud(tmp_path / "state", port=0) as again:
        assert again.now() >= moved
    with pytest.raises(ConfigError):
        dpskit.LocalCloud(tmp_path / "state", port=0, clock=start)
    with pytest.raises(ConfigError):
        dpskit.LocalCloud(port=0, clock=datetime(2031, 5, 1))


def test_the_official_dps_service_sdk_writes_and_reads_credential_policy_name(
    cloud: dpskit.LocalCloud, tmp_path: Path
) -> None:
    """``azure-iot-deviceprovisioning`` sends enrollments as the JSON it is given, so the
    preview's ``credentialPolicyName`` reaches the service as written and comes back in its
    answers (the SDK models no such member, so nothing is dropped or renamed)."""
    sdk = pytest.importorskip("azure.iot.deviceprovisioning")
    dps = cloud.create_dps("dps-sdk-policy")
    namespace = cloud.create_device_registry_namespace("adr-sdk")
    namespace.create_policy("sdk-policy")
    cloud.link_namespace(dps, namespace)
    trust = tmp_path / "ca.pem"
    trust.write_text(cloud.trust_pem)
    client = sdk.DeviceProvisioningClient.from_connection_string(
        dps.service_connection_string, connection_verify=str(trust)
    )
    body = {
        "enrollmentGroupId": "sdk-grp",
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {
                "primaryKey": generate_symmetric_key(),
                "secondaryKey": generate_symmetric_key(),
            },
        },
        "credentialPolicyName": "sdk-policy",
        "provisioningStatus": "enabled",
    }
    with cloud.record_requests() as recording:
        created = client.enrollment_group.create_or_update(id="sdk-grp", enrollment_group=body)
    sent = next(r for r in recording.requests if r.method == "PUT")
    assert sent.body["credentialPolicyName"] == "sdk-policy"
    assert created["credentialPolicyName"] == "sdk-policy"
    assert client.enrollment_group.get(id="sdk-grp")["credentialPolicyName"] == "sdk-policy"
    assert dps.enrollment_group("sdk-grp").credential_policy == "sdk-policy"


def test_the_command_line_makes_namespaces_policies_links_and_policy_enrollments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dpskit.cli import main

    def run(*argv: str) -> Any:
        status = main([*argv, "--local", str(tmp_path / "cloud"), "--json"])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        return json.loads(captured.out)

    run("cloud", "create-dps", "dps-cli")
    run("cloud", "create-hub", "hub-cli")
    namespace = run("registry", "namespace", "create", "adr-cli")
    assert namespace["rootCa"].startswith("-----BEGIN CERTIFICATE-----")
    policy = run("registry", "policy", "create", "adr-cli", "devices", "--validity-days", "9")
    assert (policy["name"], policy["validityDays"]) == ("devices", 9)
    run("registry", "link", "adr-cli", "--dps", "dps-cli")
    run("registry", "link", "adr-cli", "--hub", "hub-cli")
    group = run(
        "dps",
        "enrollment-group",
        "create",
        "dps-cli",
        "grp",
        "--symmetric-key",
        "--credential-policy",
        "devices",
    )
    assert group["credentialPolicyName"] == "devices"
    enrollment = run(
        "dps",
        "enrollment",
        "create",
        "dps-cli",
        "dev-1",
        "--symmetric-key",
        "--credential-policy",
        "devices",
    )
    assert enrollment["credentialPolicyName"] == "devices"
    # Refusals are the command's failure, with Azure's reason.
    status = main(
        [
            "registry",
            "policy",
            "create",
            "adr-cli",
            "short",
            "--validity-days",
            "6",
            "--local",
            str(tmp_path / "cloud"),
        ]
    )
    assert status != 0
    assert "7 to 90" in capsys.readouterr().err
