"""The official management SDK (``azure-mgmt-iothubprovisioningservices``), unchanged but for its
base URL and TLS trust, drives the emulator's ARM API: CA certificate upload, verification code,
proof of possession with a dpskit verification certificate, and the refusals Azure gives; and
long-running DPS creates and deletes, paged lists and throttling, as Azure runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit
from conftest import LocalToken

mgmt = pytest.importorskip("azure.mgmt.iothubprovisioningservices")

from azure.core import MatchConditions  # noqa: E402
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.mgmt.iothubprovisioningservices import IotDpsClient  # noqa: E402
from azure.mgmt.iothubprovisioningservices.models import (  # noqa: E402
    CertificateProperties,
    CertificateResponse,
    IotDpsPropertiesDescription,
    IotDpsSkuInfo,
    ProvisioningServiceDescription,
    VerificationCodeRequest,
)

RESOURCE_GROUP = dpskit.LocalCloud.resource_group


def _etag(resource: Any) -> str:
    etag = resource.etag
    assert isinstance(etag, str), f"no etag in {resource}"
    return etag


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        running.create_dps("peer-dps")
        yield running


@pytest.fixture
def client(cloud: dpskit.LocalCloud, tmp_path: Path) -> IotDpsClient:
    trust = tmp_path / "emulator-ca.pem"
    trust.write_text(cloud.trust_pem)
    return IotDpsClient(
        LocalToken(),
        cloud.subscription_id,
        base_url=cloud.arm_endpoint,
        connection_verify=str(trust),
    )


def test_upload_code_and_proof_of_possession_with_the_management_sdk(
    cloud: dpskit.LocalCloud, client: IotDpsClient
) -> None:
    root = dpskit.CertificateAuthority.create_root("Mgmt Peer Root")
    inter = root.create_intermediate("Mgmt Peer Intermediate")
    certs = client.dps_certificate
    # The SDK sends the certificate as bytes: base64 of the PEM text on the wire.
    uploaded = certs.create_or_update(
        RESOURCE_GROUP,
        "peer-dps",
        "root",
        CertificateResponse(
            properties=CertificateProperties(certificate=root.certificate.pem.encode())
        ),
    )
    assert uploaded.properties is not None
    assert uploaded.properties.is_verified is False
    assert uploaded.properties.thumbprint == root.certificate.thumbprint_sha1.upper()
    assert uploaded.properties.subject == "CN=Mgmt Peer Root"
    # RFC 1123 dates reach the SDK as datetimes.
    assert uploaded.properties.expiry is not None
    assert uploaded.properties.expiry.year == root.certificate.not_after.year

    code = certs.generate_verification_code(
        "root",
        RESOURCE_GROUP,
        "peer-dps",
        etag=_etag(uploaded),
        match_condition=MatchConditions.IfNotModified,
    )
    assert code.properties is not None
    verification_code = code.properties.verification_code
    assert verification_code
    assert _etag(code) != _etag(uploaded)

    # Signed by another key (the intermediate's, with the right CN): refused, nothing verified.
    forged = inter.create_verification_certificate(verification_code)
    with pytest.raises(HttpResponseError) as refused:
        certs.verify_certificate(
            "root",
            RESOURCE_GROUP,
            "peer-dps",
            VerificationCodeRequest(certificate=forged.pem),
            etag=_etag(code),
            match_condition=MatchConditions.IfNotModified,
        )
    assert refused.value.status_code == 400
    assert not cloud.dps("peer-dps").ca_certificate("root").is_verified

    current = certs.get("root", RESOURCE_GROUP, "peer-dps")
    fresh = certs.generate_verification_code(
        "root",
        RESOURCE_GROUP,
        "peer-dps",
        etag=_etag(current),
        match_condition=MatchConditions.IfNotModified,
    )
    assert fresh.properties is not None
    assert fresh.properties.verification_code
    signed = root.create_verification_certificate(fresh.properties.verification_code)
    verified = certs.verify_certificate(
        "root",
        RESOURCE_GROUP,
        "peer-dps",
        VerificationCodeRequest(certificate=signed.pem),
        etag=_etag(fresh),
        match_condition=MatchConditions.IfNotModified,
    )
    assert verified.properties is not None
    assert verified.properties.is_verified is True
    # dpskit's own API sees the same state.
    assert cloud.dps("peer-dps").ca_certificate("root").is_verified
    assert [c.name for c in certs.list(RESOURCE_GROUP, "peer-dps").value or []] == ["root"]


def test_management_sdk_sees_azure_refusals(client: IotDpsClient) -> None:
    root = dpskit.CertificateAuthority.create_root("Mgmt Peer Root 2")
    certs = client.dps_certificate
    uploaded = certs.create_or_update(
        RESOURCE_GROUP,
        "peer-dps",
        "root",
        CertificateResponse(
            properties=CertificateProperties(certificate=root.certificate.pem.encode())
        ),
    )
    # A stale etag: 412.
    certs.generate_verification_code(
        "root",
        RESOURCE_GROUP,
        "peer-dps",
        etag=_etag(uploaded),
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(HttpResponseError) as stale:
        certs.delete(
            RESOURCE_GROUP,
            "peer-dps",
            "root",
            etag=_etag(uploaded),
            match_condition=MatchConditions.IfNotModified,
        )
    assert stale.value.status_code == 412
    # A missing certificate and a missing DPS: 404.
    with pytest.raises(ResourceNotFoundError):
        certs.get("nope", RESOURCE_GROUP, "peer-dps")
    with pytest.raises(ResourceNotFoundError):
        certs.get("root", RESOURCE_GROUP, "no-such-dps")
    current = certs.get("root", RESOURCE_GROUP, "peer-dps")
    certs.delete(
        RESOURCE_GROUP,
        "peer-dps",
        "root",
        etag=_etag(current),
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(ResourceNotFoundError):
        certs.get("root", RESOURCE_GROUP, "peer-dps")


def test_the_management_sdk_polls_long_running_operations_pages_and_rides_out_429s(
    tmp_path: Path,
) -> None:
    """azure-core's ARM poller against Azure's LRO shape (201/202 with Azure-AsyncOperation and
    Location, Running then Succeeded), its pager against nextLink, and its retry policy against
    ARM's 429s: the SDK unchanged gets through all three."""
    with dpskit.LocalCloud(
        port=0,
        arm_operation_seconds=1.0,
        arm_page_size=1,
        throttle_every=4,
        throttle_retry_after=0,
    ) as cloud:
        trust = tmp_path / "emulator-ca.pem"
        trust.write_text(cloud.trust_pem)
        client = IotDpsClient(
            LocalToken(),
            cloud.subscription_id,
            base_url=cloud.arm_endpoint,
            connection_verify=str(trust),
        )
        dps_ops = client.iot_dps_resource
        description = ProvisioningServiceDescription(
            location="westeurope",
            sku=IotDpsSkuInfo(name="S1", capacity=1),
            properties=IotDpsPropertiesDescription(),
        )
        poller = dps_ops.begin_create_or_update(RESOURCE_GROUP, "lro-peer-dps", description)
        # The first answer came at once; the operation is still running.
        assert not poller.done()
        created = poller.result()
        assert created.properties is not None
        assert created.properties.provisioning_state == "Succeeded"
        assert created.properties.state == "Active"
        dps_ops.begin_create_or_update(RESOURCE_GROUP, "lro-peer-dps-2", description).result()
        # One item per page: the pager follows nextLink through both.
        names = sorted(d.name or "" for d in dps_ops.list_by_resource_group(RESOURCE_GROUP))
        assert names == ["lro-peer-dps", "lro-peer-dps-2"]
        # The delete is awaited; until then the name is taken, afterwards gone.
        deleting = dps_ops.begin_delete("lro-peer-dps", RESOURCE_GROUP)
        assert dps_ops.get("lro-peer-dps", RESOURCE_GROUP).properties.state == "Deleting"
        with pytest.raises(HttpResponseError) as taken:
            dps_ops.begin_create_or_update(RESOURCE_GROUP, "lro-peer-dps", description)
        assert taken.value.status_code == 409
        deleting.result()
        with pytest.raises(ResourceNotFoundError):
            dps_ops.get("lro-peer-dps", RESOURCE_GROUP)
        assert cloud.throttled_requests.arm > 0
