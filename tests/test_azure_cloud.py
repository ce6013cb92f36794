"""``AzureCloud`` is the same REST client as ``LocalCloud``, pointed at Azure. Azure is not
reachable from the test machines, so it is exercised against the emulator's ARM endpoint (which
speaks Azure's API), with real credentials objects: the management and DPS service paths run
exactly as they would against management.azure.com."""

from __future__ import annotations

import http.server
import json
import os
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import dpskit
from dpskit import _native
from dpskit.credentials import AccessToken, AzureCliCredential, ServicePrincipal, token_provider


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
        cloud="AzurePublicCloud",
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
    # The token is asked for the public cloud's ARM scope once and then cached.
    assert credential.calls == [("https://management.azure.com/.default",)]
    # What AzureCloud did is what the local cloud sees.
    assert cloud.dps("azure-path-dps").enrollment_group("devices").ca_references == ("root",)
    # The Azure path reads the service's answers into the same typed records.
    record = azure._rest.enrollment_group(dps._service, "devices")
    assert isinstance(record, _native.EnrollmentGroupRecord)
    assert record.attestation.primary_ca_reference == "root"
    assert record.settings.allocation.iot_hubs == [hub.host_name]
    assert dps.enrollment_groups() == [group]
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


SOVEREIGN = [
    # (cloud, ARM endpoint, token scope, authority, DPS global endpoint)
    (
        "AzureCloud",
        "https://management.azure.com",
        "https://management.azure.com/.default",
        "https://login.microsoftonline.com",
        "global.azure-devices-provisioning.net",
    ),
    (
        "AzureChinaCloud",
        "https://management.chinacloudapi.cn",
        "https://management.chinacloudapi.cn/.default",
        "https://login.chinacloudapi.cn",
        "global.azure-devices-provisioning.cn",
    ),
    (
        "AzureUSGovernment",
        "https://management.usgovcloudapi.net",
        "https://management.usgovcloudapi.net/.default",
        "https://login.microsoftonline.us",
        "global.azure-devices-provisioning.us",
    ),
]


@pytest.mark.parametrize(("name", "arm", "scope", "authority", "global_dps"), SOVEREIGN)
def test_a_sovereign_cloud_sets_endpoint_scope_and_authority_together(
    cloud: dpskit.LocalCloud, name: str, arm: str, scope: str, authority: str, global_dps: str
) -> None:
    alone = dpskit.AzureCloud("sub", "rg", "token", cloud=name)
    assert (alone.arm_endpoint, alone.token_scope, alone.authority) == (arm, scope, authority)
    assert alone.dps_global_endpoint == global_dps
    # The endpoint alone implies its cloud.
    implied = dpskit.AzureCloud("sub", "rg", "token", arm_endpoint=arm + "/")
    assert (implied.token_scope, implied.authority) == (scope, authority)
    # Pointed at the emulator's ARM, the token is still asked for the cloud's scope.
    credential = CountingCredential()
    azure = dpskit.AzureCloud(
        cloud.subscription_id,
        cloud.resource_group,
        credential,
        cloud=name,
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )
    assert azure.hubs() == []
    assert credential.calls == [(scope,)]


def test_unknown_endpoints_and_explicit_overrides(cloud: dpskit.LocalCloud) -> None:
    credential = CountingCredential()
    place = (cloud.subscription_id, cloud.resource_group, credential)
    stack = dpskit.AzureCloud(*place, arm_endpoint=cloud.arm_endpoint, trust_pem=cloud.trust_pem)
    stack.all_dps()
    # No known cloud: the endpoint is the audience.
    assert credential.calls == [(f"{cloud.arm_endpoint}/.default",)]
    assert stack.environment is None
    given = dpskit.AzureCloud(
        "sub", "rg", "t", cloud="AzureChinaCloud", token_scope="api://x/.default", authority="a"
    )
    assert (given.arm_endpoint, given.token_scope, given.authority) == (
        "https://management.chinacloudapi.cn",
        "api://x/.default",
        "a",
    )
    with pytest.raises(dpskit.ConfigError, match="AzureChinaCloud"):
        dpskit.AzureCloud("sub", "rg", "t", cloud="AzureMoonCloud")


class _Authority(http.server.BaseHTTPRequestHandler):
    """A stand-in Entra ID token endpoint on loopback: records each grant, answers a token."""

    grants: ClassVar[list[tuple[str, dict[str, list[str]]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        _Authority.grants.append((self.path, form))
        body = json.dumps({"access_token": "from-the-authority", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def authority() -> Iterator[str]:
    _Authority.grants = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Authority)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_service_principal_signs_in_at_the_clouds_authority_for_its_scope(
    cloud: dpskit.LocalCloud, authority: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    principal = ServicePrincipal("tenant-1", "client-1", "secret-1")
    # Left to the cloud, the principal signs in at the cloud's authority host.
    china = dpskit.AzureCloud("sub", "rg", principal, cloud="AzureChinaCloud")
    assert china.authority == "https://login.chinacloudapi.cn"
    assert principal.token_url.startswith("https://login.microsoftonline.com/tenant-1/")
    # The whole path, with the authority on loopback: the grant asks for the US Government
    # scope, and its token reaches ARM.
    azure = dpskit.AzureCloud(
        cloud.subscription_id,
        cloud.resource_group,
        principal,
        cloud="AzureUSGovernment",
        authority=authority,
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )
    assert azure.all_dps() == []
    [(path, form)] = _Authority.grants
    assert path == "/tenant-1/oauth2/v2.0/token"
    assert form["scope"] == ["https://management.usgovcloudapi.net/.default"]
    assert form["client_id"] == ["client-1"]
    # From the environment (credential=None) too.
    for name, value in [
        ("AZURE_TENANT_ID", "tenant-2"),
        ("AZURE_CLIENT_ID", "client-2"),
        ("AZURE_CLIENT_SECRET", "secret-2"),
    ]:
        monkeypatch.setenv(name, value)
    from_env = dpskit.AzureCloud(
        cloud.subscription_id,
        cloud.resource_group,
        cloud="AzureChinaCloud",
        authority=authority,
        arm_endpoint=cloud.arm_endpoint,
        trust_pem=cloud.trust_pem,
    )
    assert from_env.hubs() == []
    path, form = _Authority.grants[-1]
    assert path == "/tenant-2/oauth2/v2.0/token"
    assert form["scope"] == ["https://management.chinacloudapi.cn/.default"]


def test_the_azure_cli_is_asked_for_the_clouds_resource(
    cloud: dpskit.LocalCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in `az` on PATH that records its arguments and prints a token.
    calls = tmp_path / "calls.json"
    az = tmp_path / "az"
    az.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "print(json.dumps({'accessToken': 'from-az', 'expires_on': 4102444800}))\n"
    )
    az.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for credential in (None, AzureCliCredential()):
        azure = dpskit.AzureCloud(
            cloud.subscription_id,
            cloud.resource_group,
            credential,
            cloud="AzureChinaCloud",
            arm_endpoint=cloud.arm_endpoint,
            trust_pem=cloud.trust_pem,
        )
        assert azure.hubs() == []
    for line in calls.read_text().splitlines():
        args = json.loads(line)
        assert args[args.index("--resource") + 1] == "https://management.chinacloudapi.cn"
    assert len(calls.read_text().splitlines()) == 2
