"""Entra ID (Azure AD) tokens for Azure Resource Manager, without a hard dependency on
azure-identity: an explicit token, a service principal with a client secret, the Azure CLI's
login, or any object with azure-identity's ``get_token(scope)`` (so ``DefaultAzureCredential()``
works as is). Tokens are cached until shortly before they expire."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from dpskit.errors import AuthenticationError, ConfigError

__all__ = [
    "ARM_SCOPE",
    "AZURE_CLOUDS",
    "AccessToken",
    "AzureCliCredential",
    "AzureEnvironment",
    "ServicePrincipal",
    "TokenCredential",
    "azure_environment",
    "token_provider",
]

#: The scope ARM tokens are requested for in the public cloud.
ARM_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class AzureEnvironment:
    """One Azure cloud's endpoints: where ARM answers, the Entra ID authority that issues its
    tokens, and the DNS suffixes of IoT Hub and DPS. ARM's token audience is its endpoint, so
    the token scope is ``{arm_endpoint}/.default`` (as the Azure SDKs' ``credential_scopes``)."""

    name: str
    arm_endpoint: str
    authority: str
    hub_suffix: str
    dps_suffix: str

    @property
    def token_scope(self) -> str:
        """The scope ARM tokens of this cloud are requested for."""
        return f"{self.arm_endpoint}/.default"

    @property
    def dps_global_endpoint(self) -> str:
        """The DPS host devices of this cloud dial (``global.{dps_suffix}``)."""
        return f"global.{self.dps_suffix}"


#: The clouds by the names the Azure CLI gives them (``az cloud list``); the endpoints and
#: authority hosts are those of the Azure SDKs (azure-identity's ``AzureAuthorityHosts``).
AZURE_CLOUDS: dict[str, AzureEnvironment] = {
    env.name: env
    for env in (
        AzureEnvironment(
            "AzureCloud",
            "https://management.azure.com",
            "https://login.microsoftonline.com",
            "azure-devices.net",
            "azure-devices-provisioning.net",
        ),
        AzureEnvironment(
            "AzureChinaCloud",
            "https://management.chinacloudapi.cn",
            "https://login.chinacloudapi.cn",
            "azure-devices.cn",
            "azure-devices-provisioning.cn",
        ),
        AzureEnvironment(
            "AzureUSGovernment",
            "https://management.usgovcloudapi.net",
            "https://login.microsoftonline.us",
            "azure-devices.us",
            "azure-devices-provisioning.us",
        ),
    )
}
#: Other spellings of the same clouds (the SDKs' constants, and "public").
_CLOUD_ALIASES = {
    "azurepubliccloud": "AzureCloud",
    "public": "AzureCloud",
    "azure_public_cloud": "AzureCloud",
    "china": "AzureChinaCloud",
    "azure_china_cloud": "AzureChinaCloud",
    "usgovernment": "AzureUSGovernment",
    "azureusgovernmentcloud": "AzureUSGovernment",
    "azure_us_gov_cloud": "AzureUSGovernment",
}


def azure_environment(
    cloud: str | None = None, arm_endpoint: str | None = None
) -> AzureEnvironment | None:
    """The cloud named ``cloud`` (``ConfigError`` for an unknown name), else the known cloud
    whose ARM endpoint is ``arm_endpoint``, else the public cloud when neither is given;
    ``None`` for an endpoint of no known cloud (an emulator, Azure Stack)."""
    if cloud is not None:
        key = cloud.strip().lower()
        name = _CLOUD_ALIASES.get(key) or next((n for n in AZURE_CLOUDS if n.lower() == key), None)
        if name is None:
            known = ", ".join(AZURE_CLOUDS)
            raise ConfigError(f"unknown Azure cloud {cloud!r}: use one of {known}")
        return AZURE_CLOUDS[name]
    if arm_endpoint is None:
        return AZURE_CLOUDS["AzureCloud"]
    wanted = arm_endpoint.rstrip("/").lower()
    return next((e for e in AZURE_CLOUDS.values() if e.arm_endpoint == wanted), None)


#: A token is renewed when it has less than this many seconds left.
_RENEW_MARGIN = 300


class AccessToken(NamedTuple):
    """A bearer token and its expiry (Unix seconds), as azure-identity returns them."""

    token: str
    expires_on: int


@runtime_checkable
class TokenCredential(Protocol):
    """What azure-identity's credentials offer, and what :class:`AzureCloud` needs."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        """A token (with ``.token`` and ``.expires_on``) for ``scopes``."""


@dataclass(frozen=True)
class ServicePrincipal:
    """An app registration's client secret: the OAuth 2.0 client-credentials grant against
    Entra ID. Read from ``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID`` and ``AZURE_CLIENT_SECRET`` by
    :meth:`from_environment`."""

    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    #: The Entra ID authority host; ``None`` takes the one of the cloud the principal is used
    #: with (:class:`~dpskit.AzureCloud` fills it in), the public cloud's when used alone.
    authority: str | None = None

    @classmethod
    def from_environment(cls, authority: str | None = None) -> ServicePrincipal | None:
        """The service principal the standard environment variables describe, if they do."""
        names = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
        values = [os.environ.get(n) for n in names]
        if not all(values):
            return None
        tenant, client, secret = (v or "" for v in values)
        return cls(tenant, client, secret, authority)

    @property
    def token_url(self) -> str:
        """Where the client-credentials grant is posted."""
        authority = (self.authority or AZURE_CLOUDS["AzureCloud"].authority).rstrip("/")
        return f"{authority}/{urllib.parse.quote(self.tenant_id)}/oauth2/v2.0/token"

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Ask Entra ID for a token (client credentials)."""
        url = self.token_url
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": " ".join(scopes) or ARM_SCOPE,
            }
        ).encode()
        request = urllib.request.Request(url, data=form, method="POST")  # noqa: S310 (https URL built above)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise AuthenticationError(
                f"Entra ID refused the service principal {self.client_id}: {error.code} {detail}"
            ) from error
        except urllib.error.URLError as error:
            raise AuthenticationError(f"cannot reach {url}: {error.reason}") from error
        expires_in = int(answer.get("expires_in", 3600))
        return AccessToken(answer["access_token"], int(time.time()) + expires_in)


@dataclass(frozen=True)
class AzureCliCredential:
    """The account ``az login`` signed in: ``az account get-access-token`` for the scope's
    resource. The CLI signs in at the authority of its active cloud: for a sovereign cloud,
    ``az cloud set --name AzureChinaCloud`` (or ``AzureUSGovernment``) before ``az login``."""

    tenant_id: str | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Ask the Azure CLI for a token."""
        az = shutil.which("az")
        if az is None:
            raise AuthenticationError(
                "no Azure credential: install the Azure CLI and run `az login`, set "
                "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or pass credential="
            )
        resource = (scopes[0] if scopes else ARM_SCOPE).removesuffix("/.default")
        command = [az, "account", "get-access-token", "--resource", resource, "--output", "json"]
        if self.tenant_id:
            command += ["--tenant", self.tenant_id]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AuthenticationError(
                f"`az account get-access-token` failed: {done.stderr.strip()}"
            )
        answer = json.loads(done.stdout)
        expires = answer.get("expires_on")
        if expires is None:
            expires = datetime.fromisoformat(answer["expiresOn"]).timestamp()
        return AccessToken(answer["accessToken"], int(expires))


class _CachedTokens:
    """Calls a credential only when the cached token is about to expire (thread-safe: the
    Rust runtime may ask from several threads)."""

    def __init__(self, credential: TokenCredential, scope: str) -> None:
        self._credential = credential
        self._scope = scope
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._expires_on - time.time() < _RENEW_MARGIN:
                answer = self._credential.get_token(self._scope)
                self._token = str(answer.token)
                self._expires_on = float(answer.expires_on)
            return self._token


def token_provider(
    credential: str | TokenCredential | None,
    scope: str = ARM_SCOPE,
    authority: str | None = None,
) -> Any:
    """A zero-argument callable giving a valid bearer token for ``scope``.

    ``credential`` is a token string (used as is), an object with ``get_token`` (azure-identity
    credentials, :class:`ServicePrincipal`, :class:`AzureCliCredential`), or ``None``: a service
    principal from the environment, else the Azure CLI's login. ``authority`` is the Entra ID
    host a :class:`ServicePrincipal` without one of its own signs in at (an azure-identity
    credential takes its ``authority`` when it is created).
    """
    if isinstance(credential, str):
        if not credential.strip():
            raise ConfigError("an empty token is not a credential")
        token = credential
        return lambda: token
    if credential is None:
        credential = ServicePrincipal.from_environment(authority) or AzureCliCredential()
    elif isinstance(credential, ServicePrincipal) and credential.authority is None:
        credential = dataclasses.replace(credential, authority=authority)
    if not isinstance(credential, TokenCredential):
        raise ConfigError(
            f"credential must be a token string or have get_token(scope), "
            f"not {type(credential).__name__}"
        )
    return _CachedTokens(credential, scope)
