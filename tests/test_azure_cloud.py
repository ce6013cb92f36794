"""``AzureCloud`` is the same REST client as ``LocalCloud``, pointed at Azure. Azure is not
reachable from the test machines, so it is exercised against the emulator's ARM endpoint (which
speaks Azure's API), with real credentials objects: the management and DPS service paths run
exactly as they would against management.azure.com."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dpskit
from dpskit.credentials import AccessToken, token_provider


class CountingCredential:
    """An azure-identity-shaped credential that counts how often it is asked."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.lifetime = lifetime

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(scopes)
        return AccessToken(f"token-{len(self.calls)}", int(time.time()) + self.lifetime)


@pytest.fixture
def cloud() -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(port=0) as running:
        yield running


def test_azure_cloud_manages_dps_and_certificates_over_arm(cloud: dpskit.LocalCloud) -> None:
    credential = CountingCredential()
    # The emulator's ARM answers for its own subscription and resource group only, as Azure
    # answers for the caller's.
    azure = dpskit.AzureCloud(
        cloud.subscription_id,
        cloud.resource_group,
        credential,
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )
    hub = azure.create_hub("azure-path-hub", "westeurope")
    dps = azure.create_dps("azure-path-dps", "westeurope")
    link = azure.link_hub(dps, hub, allocation_weight=3)
    assert (link.hub, link.host_name, link.allocation_weight) == (
        "azure-path-hub",
        hub.host_name,
        3,
    )
    root = dpskit.CertificateAuthority.create_root("Azure Path Root")
    assert dps.prove_possession("root", root).is_verified
    group = dps.create_enrollment_group("devices", ca_reference="root", hubs=[hub])
    assert group.iot_hubs == (hub.host_name,)
    # The token is asked for the ARM scope once and then cached.
    assert credential.calls == [("https://management.azure.com/.default",)]
    # What AzureCloud did is what the local cloud sees.
    assert cloud.dps("azure-path-dps").enrollment_group("devices").ca_references == ("root",)
    assert cloud.resource_group in repr(azure)
    azure.delete_dps(dps)
    with pytest.raises(dpskit.NotFoundError):
        azure.dps("azure-path-dps")


def test_tokens_are_renewed_before_they_expire() -> None:
    short = CountingCredential(lifetime=60)  # inside the 5-minute renewal margin
    provider = token_provider(short)
    assert provider() == "token-1"
    assert provider() == "token-2"
    long = CountingCredential()
    cached = token_provider(long)
    assert cached() == cached() == "token-1"
    assert token_provider("explicit")() == "explicit"


def test_bad_credentials_are_refused_clearly(cloud: dpskit.LocalCloud) -> None:
    with pytest.raises(dpskit.ConfigError):
        token_provider("  ")
    with pytest.raises(dpskit.ConfigError):
        token_provider(42)  # type: ignore[arg-type]
    with pytest.raises(dpskit.ConfigError):
        dpskit.AzureCloud("", "rg", "token")

    class Broken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise RuntimeError("no login")

    azure = dpskit.AzureCloud(
        "sub", "rg", Broken(), arm_endpoint=cloud.arm_endpoint, trust_pem=cloud.trust_pem
    )
    with pytest.raises(dpskit.AuthenticationError, match="no login"):
        azure.hubs()


def test_service_principal_secret_stays_out_of_repr() -> None:
    principal = dpskit.ServicePrincipal("tenant", "client", "s3cret-value")
    assert "s3cret-value" not in repr(principal)


def test_the_emulator_can_require_configured_arm_tokens() -> None:
    with dpskit.LocalCloud(port=0, arm_tokens=["team-token"]) as cloud:
        # LocalCloud itself sends a configured token.
        dps = cloud.create_dps("guarded")
        place = (cloud.subscription_id, cloud.resource_group)
        wrong = dpskit.AzureCloud(
            *place, "someone-else", arm_endpoint=cloud.arm_endpoint, trust_pem=cloud.trust_pem
        )
        with pytest.raises(dpskit.AuthenticationError, match="What to do"):
            wrong.dps("guarded")
        right = dpskit.AzureCloud(
            *place, "team-token", arm_endpoint=cloud.arm_endpoint, trust_pem=cloud.trust_pem
        )
        assert right.dps("guarded").id_scope == dps.id_scope
        assert cloud.arm_token == "team-token"


def test_arm_answers_for_its_own_subscription_and_resource_group_only(
    cloud: dpskit.LocalCloud,
) -> None:
    cloud.create_dps("mine")
    for subscription, group, message in [
        ("11111111-2222-3333-4444-555555555555", cloud.resource_group, "subscription .* not"),
        (cloud.subscription_id, "someone-elses-rg", "Resource group .* not"),
    ]:
        elsewhere = dpskit.AzureCloud(
            subscription, group, "any", arm_endpoint=cloud.arm_endpoint, trust_pem=cloud.trust_pem
        )
        with pytest.raises(dpskit.NotFoundError, match=message):
            elsewhere.dps("mine")


def test_off_loopback_arm_needs_the_generated_token_kept_owner_only(tmp_path: Path) -> None:
    # Bound to every address; the test itself only talks over loopback.
    with dpskit.LocalCloud(tmp_path / "state", host="0.0.0.0", port=0) as cloud:  # noqa: S104
        token = cloud.arm_token
        assert token
        endpoints = cloud.endpoints_file
        assert endpoints is not None
        assert stat.S_IMODE(endpoints.stat().st_mode) == 0o600
        assert json.loads(endpoints.read_text())["armToken"] == token
        # LocalCloud uses the token; anyone else on the network is refused.
        assert cloud.create_dps("remote").name == "remote"
        for guess in ["dpskit-local", "anything"]:
            stranger = dpskit.AzureCloud(
                cloud.subscription_id,
                cloud.resource_group,
                guess,
                arm_endpoint=cloud.arm_endpoint,
                trust_pem=cloud.trust_pem,
            )
            with pytest.raises(dpskit.AuthenticationError):
                stranger.dps("remote")
        # Another local process of the same user finds the token through the file.
        attached = dpskit.LocalCloud.attach(tmp_path / "state")
        assert attached is not None
        assert attached.dps("remote").name == "remote"
