"""``AzureCloud``: real Azure, ARM with an Entra ID token in the public or a sovereign cloud,
the service APIs with the SAS keys ARM lists."""

from __future__ import annotations

import os

from dpskit._native import RestClient
from dpskit.cloud.base import _Cloud
from dpskit.credentials import AZURE_CLOUDS, TokenCredential, azure_environment, token_provider
from dpskit.errors import ConfigError


class AzureCloud(_Cloud):
    """Real Azure: ARM with an Entra ID token for hubs, DPS instances, links and CA
    certificates; the DPS and hub service APIs with the SAS keys ARM lists. The same methods as
    :class:`LocalCloud` (less the emulator's realism knobs).

    ``credential`` is a token string, a :class:`~dpskit.credentials.ServicePrincipal`, an
    :class:`~dpskit.credentials.AzureCliCredential`, any azure-identity credential (for example
    ``DefaultAzureCredential()``), or ``None`` (environment service principal, else ``az
    login``). The resource group must exist. Azure resources cost money: delete what you create
    (:meth:`delete_hub`, :meth:`delete_dps`).

    ``cloud`` picks a sovereign cloud by its Azure CLI name (``AzureCloud``, the default, also
    ``AzurePublicCloud``; ``AzureChinaCloud``; ``AzureUSGovernment``): its ARM endpoint, the
    scope its tokens are asked for and the Entra ID authority dpskit's own credentials sign in
    at, together (an azure-identity credential takes its ``authority=`` when created). An
    ``arm_endpoint`` of a known cloud implies that cloud; another endpoint without ``cloud``
    gets tokens for ``{arm_endpoint}/.default``. ``token_scope`` and ``authority`` override.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        credential: str | TokenCredential | None = None,
        *,
        cloud: str | None = None,
        arm_endpoint: str | None = None,
        token_scope: str | None = None,
        authority: str | None = None,
        trust_pem: str | None = None,
    ) -> None:
        if not subscription_id or not resource_group:
            raise ConfigError("subscription_id and resource_group are required")
        environment = azure_environment(cloud, arm_endpoint)
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        #: The known cloud this one is (``None``: an endpoint of no known cloud).
        self.environment = environment
        endpoint = arm_endpoint or (environment.arm_endpoint if environment else "")
        self.arm_endpoint = endpoint.rstrip("/")
        #: The scope ARM tokens are asked for.
        self.token_scope = token_scope or (
            environment.token_scope if environment else f"{self.arm_endpoint}/.default"
        )
        #: The Entra ID authority host dpskit's credentials sign in at.
        self.authority = authority or (
            environment.authority if environment else AZURE_CLOUDS["AzureCloud"].authority
        )
        self._trust_pem = trust_pem
        self._rest_client = RestClient(
            self.arm_endpoint,
            subscription_id,
            resource_group,
            token_provider(credential, self.token_scope, self.authority),
            trust_pem,
        )

    @property
    def dps_global_endpoint(self) -> str:
        """The DPS host devices of this cloud dial (``global.azure-devices-provisioning.net``
        in the public cloud, ``.cn`` in China, ``.us`` for US Government)."""
        environment = self.environment or AZURE_CLOUDS["AzureCloud"]
        return environment.dps_global_endpoint

    @classmethod
    def from_environment(cls, credential: str | TokenCredential | None = None) -> AzureCloud:
        """From ``AZURE_SUBSCRIPTION_ID`` and ``AZURE_RESOURCE_GROUP`` (what the notebooks'
        ``TARGET = "azure"`` switch reads), in the cloud ``AZURE_CLOUD`` names (default: the
        public cloud)."""
        subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
        group = os.environ.get("AZURE_RESOURCE_GROUP")
        if not subscription or not group:
            raise ConfigError("set AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP")
        return cls(subscription, group, credential, cloud=os.environ.get("AZURE_CLOUD") or None)

    @property
    def _rest(self) -> RestClient:
        return self._rest_client

    @property
    def trust_pem(self) -> str | None:
        """The pinned CA for the endpoints, or ``None`` for the system roots (Azure)."""
        return self._trust_pem

    def __repr__(self) -> str:
        return (
            f"<AzureCloud subscription={self.subscription_id!r} "
            f"resource_group={self.resource_group!r} arm={self.arm_endpoint!r}"
            f"{f' cloud={self.environment.name!r}' if self.environment else ''}>"
        )
