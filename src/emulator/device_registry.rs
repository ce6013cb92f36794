//! Azure Device Registry (ADR) in the local cloud, as its certificate management preview
//! models it (ARM api-version 2025-11-01-preview): namespaces, each with the root CA of its one
//! credential (`credentials/default`), the credential policies below it (one issuing CA each,
//! signed by the root, and the validity of the certificates it issues), and the links that tie
//! a DPS and a hub to a namespace. DPS issues through a policy of the namespace it is linked to
//! ([`Cloud::issuing_policy`]); a hub trusts devices whose chain leads to an issuing CA of its
//! namespace ([`Cloud::hub_issuing_cas`]: Azure's "credential sync", done here at link time and
//! whenever a policy is made). Records and CA keys live in the store, so each CA is made once
//! and the same certificates come back after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::emulator::cloud::Cloud;
use crate::emulator::model::CredentialPolicyRef;
use crate::emulator::store::{Store, kind};
use crate::error::{Error, Result};
use crate::pki::{CaOptions, Certificate, CertificateAuthority, CertificateRequest, KeyAlgorithm};
use crate::pki::{PrivateKey, Validity};

/// Years a namespace's root CA is valid.
const ROOT_YEARS: i64 = 25;
/// Years a policy's issuing CA is valid.
const ISSUING_YEARS: i64 = 5;
/// How far a new certificate's validity starts before the clock's now, so a peer whose clock
/// lags a little still accepts it.
const BACKDATE_SECONDS: i64 = 300;
/// The name of a namespace's one credential (the public preview allows no other), which is
/// also the certificate authority a three-name enrollment reference must name.
pub(crate) const CREDENTIAL_NAME: &str = "default";
/// DPS's message when an enrollment names a policy and the DPS has no namespace (the SDK
/// team's test recipe meets it as errorCode 400004).
pub(crate) const NO_NAMESPACE_MESSAGE: &str =
    "A Device Registry Namespace is required to be set on this DPS instance";

/// A Device Registry namespace with its credential's root CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRecord {
    /// Resource name.
    pub name: String,
    /// Azure region name.
    pub location: String,
    /// The namespace's `properties.uuid`.
    pub uuid: String,
    /// The credential's root CA certificate (PEM), "CN=<namespace> Root CA".
    pub root_ca_pem: String,
    /// Creation time, Unix seconds (the cloud's clock).
    pub created: i64,
}

/// A credential policy of a namespace: its issuing CA and what it issues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRecord {
    /// The namespace it belongs to.
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// Days an issued device certificate is valid (7 to 90).
    pub validity_days: u32,
    /// The CA's key type (`ECC`).
    pub key_type: String,
    /// The issuing CA certificate (PEM), "CN=<namespace> <policy> Issuing CA", signed by the
    /// namespace's root.
    pub issuing_ca_pem: String,
    /// Creation time, Unix seconds (the cloud's clock).
    pub created: i64,
}

/// Which kind of resource a link ties to a namespace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) enum LinkedKind {
    /// A DPS instance (`properties.deviceRegistryNamespace`).
    Dps,
    /// An IoT hub (`properties.deviceRegistry`).
    Hub,
}

impl LinkedKind {
    fn key(self, resource: &str) -> String {
        match self {
            LinkedKind::Dps => format!("dps/{resource}"),
            LinkedKind::Hub => format!("hub/{resource}"),
        }
    }
}

/// A DPS's or a hub's link to a namespace, with the identity ARM was told it uses (echoed back
/// as sent; the emulator grants every identity).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegistryLink {
    /// DPS or hub.
    pub kind: LinkedKind,
    /// The DPS's or hub's resource name.
    pub resource: String,
    /// The namespace's name.
    pub namespace: String,
    /// `authenticationType` (DPS) as sent, if any.
    #[serde(default)]
    pub authentication_type: Option<String>,
    /// The user-assigned identity's resource id as sent, if any.
    #[serde(default)]
    pub identity: Option<String>,
}

/// A policy's issuing CA, ready to sign: what DPS issues with and what a hub trusts.
pub(crate) struct IssuingPolicy {
    /// The namespace's name.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// Days an issued certificate is valid.
    pub validity_days: u32,
    issuing: CertificateAuthority,
    root: Certificate,
}

impl std::fmt::Debug for IssuingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingPolicy")
            .field("namespace", &self.namespace)
            .field("policy", &self.policy)
            .field("validity_days", &self.validity_days)
            .finish_non_exhaustive()
    }
}

impl IssuingPolicy {
    /// Issues a device certificate for `request`'s key with CN = `device_id`, valid the
    /// policy's days from `now` (less a few minutes of slack): [leaf, issuing CA, root], the
    /// order DPS's `issuedCertificateChain` and the hub's `certificates` carry.
    pub(crate) fn issue(
        &self,
        request: &CertificateRequest,
        device_id: &str,
        now: i64,
    ) -> Result<Vec<Certificate>> {
        let validity = Validity::days(i64::from(self.validity_days), Some(now - BACKDATE_SECONDS))?;
        let leaf = self
            .issuing
            .issue_for_request(request, device_id, validity)?;
        Ok(vec![
            leaf,
            self.issuing.credential().certificate().clone(),
            self.root.clone(),
        ])
    }

    /// The issuing CA certificate (what a linked hub trusts).
    pub(crate) fn issuing_ca(&self) -> &Certificate {
        self.issuing.credential().certificate()
    }

    /// The namespace's root CA certificate.
    #[cfg(test)]
    pub(crate) fn root_ca(&self) -> &Certificate {
        &self.root
    }
}

/// A namespace's root CA in memory.
struct Namespace {
    record: NamespaceRecord,
    root: Arc<CertificateAuthority>,
}

/// The Device Registry part of the cloud's model, kept in step with the store.
#[derive(Default)]
pub(crate) struct Registry {
    namespaces: BTreeMap<String, Namespace>,
    /// (namespace, policy)
    policies: BTreeMap<(String, String), (PolicyRecord, Arc<IssuingPolicy>)>,
    /// `dps/name` or `hub/name` → link
    links: BTreeMap<String, RegistryLink>,
}

impl Registry {
    /// Reads every namespace, policy (with its CA key) and link from the store.
    pub(crate) fn load(store: &Store) -> Result<Self> {
        let mut registry = Registry::default();
        for record in store.all::<NamespaceRecord>(kind::REGISTRY_NAMESPACE)? {
            let key: String = store
                .get(kind::REGISTRY_KEY, &record.name)?
                .ok_or_else(|| missing_key(&record.name))?;
            let root = CertificateAuthority::from_pem(
                record.root_ca_pem.as_bytes(),
                key.as_bytes(),
                None,
            )?;
            registry.namespaces.insert(
                record.name.clone(),
                Namespace {
                    record,
                    root: Arc::new(root),
                },
            );
        }
        for record in store.all::<PolicyRecord>(kind::REGISTRY_POLICY)? {
            let Some(namespace) = registry.namespaces.get(&record.namespace) else {
                continue;
            };
            let id = format!("{}/{}", record.namespace, record.name);
            let key: String = store
                .get(kind::REGISTRY_KEY, &id)?
                .ok_or_else(|| missing_key(&id))?;
            let chain = format!("{}{}", record.issuing_ca_pem, namespace.record.root_ca_pem);
            let issuing = CertificateAuthority::from_pem(chain.as_bytes(), key.as_bytes(), None)?;
            let policy = issuing_policy(&record, issuing, namespace.root.credential());
            registry.policies.insert(
                (record.namespace.clone(), record.name.clone()),
                (record, policy),
            );
        }
        for link in store.all::<RegistryLink>(kind::REGISTRY_LINK)? {
            registry.links.insert(link.kind.key(&link.resource), link);
        }
        Ok(registry)
    }

    /// The namespace a DPS or hub (by resource name) is linked to.
    pub(crate) fn link(&self, kind: LinkedKind, resource: &str) -> Option<&RegistryLink> {
        self.links.get(&kind.key(resource))
    }

    /// Forgets a DPS's or hub's link (its resource is being deleted), in the store too.
    pub(crate) fn drop_link(
        &mut self,
        store: &Store,
        kind_of: LinkedKind,
        resource: &str,
    ) -> Result<()> {
        let key = kind_of.key(resource);
        if self.links.remove(&key).is_some() {
            store.delete(kind::REGISTRY_LINK, &key)?;
        }
        Ok(())
    }

    fn policies_of<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a (PolicyRecord, Arc<IssuingPolicy>)> + 'a {
        self.policies
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .map(|(_, v)| v)
    }
}

fn missing_key(id: &str) -> Error {
    Error::emulator(format!(
        "state store: the Device Registry CA key of {id} is missing; the data folder is damaged"
    ))
}

fn issuing_policy(
    record: &PolicyRecord,
    issuing: CertificateAuthority,
    root: &crate::pki::Credential,
) -> Arc<IssuingPolicy> {
    Arc::new(IssuingPolicy {
        namespace: record.namespace.clone(),
        policy: record.name.clone(),
        validity_days: record.validity_days,
        issuing,
        root: root.certificate().clone(),
    })
}

fn not_found(what: &str, name: &str) -> Error {
    Error::service(404, 404_000, format!("{what} '{name}' was not found."))
}

fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        Error::emulator_caused("state store: cannot encode a Device Registry record", e)
    })
}

fn ca_options(years: i64, not_before: i64, path_length: Option<u8>) -> Result<CaOptions> {
    Ok(CaOptions {
        algorithm: KeyAlgorithm::EcP384,
        validity: Validity::days(years * 365 + years / 4, Some(not_before))?,
        path_length,
        organization: None,
    })
}

fn key_pem(key: &PrivateKey) -> String {
    key.pkcs8_pem()
}

impl Cloud {
    /// Creates a Device Registry namespace with certificate management on: its credential's
    /// root CA (EC P-384, "CN=<name> Root CA", 25 years from the cloud's now) is made here,
    /// once, and kept with its key in the store.
    pub fn create_device_registry_namespace(
        &self,
        name: &str,
        location: &str,
    ) -> Result<NamespaceRecord> {
        crate::protocol::validate_namespace_name(name)?;
        let mut model = self.write();
        if model.registry.namespaces.contains_key(name) {
            return Err(Error::service(
                409,
                409_001,
                format!("Device Registry namespace '{name}' already exists."),
            ));
        }
        let now = self.clock().now();
        let root = CertificateAuthority::create_root(
            &format!("{name} Root CA"),
            &ca_options(ROOT_YEARS, now - BACKDATE_SECONDS, None)?,
        )?;
        let record = NamespaceRecord {
            name: name.to_string(),
            location: location.to_string(),
            uuid: crate::random::guid(),
            root_ca_pem: root.credential().certificate().pem(),
            created: now,
        };
        self.store().put_many(&[
            (kind::REGISTRY_NAMESPACE, name.to_string(), encode(&record)?),
            (
                kind::REGISTRY_KEY,
                name.to_string(),
                encode(&key_pem(root.credential().key()))?,
            ),
        ])?;
        model.registry.namespaces.insert(
            name.to_string(),
            Namespace {
                record: record.clone(),
                root: Arc::new(root),
            },
        );
        Ok(record)
    }

    /// A namespace by name.
    pub fn device_registry_namespace(&self, name: &str) -> Result<NamespaceRecord> {
        self.read()
            .registry
            .namespaces
            .get(name)
            .map(|n| n.record.clone())
            .ok_or_else(|| not_found("Device Registry namespace", name))
    }

    /// Every namespace, by name.
    pub fn device_registry_namespaces(&self) -> Vec<NamespaceRecord> {
        self.read()
            .registry
            .namespaces
            .values()
            .map(|n| n.record.clone())
            .collect()
    }

    /// Deletes a namespace with its policies, their CA keys and the links to it (the DPS and
    /// hubs linked to it stop issuing and trusting its CAs).
    pub fn delete_device_registry_namespace(&self, name: &str) -> Result<()> {
        let mut model = self.write();
        if !model.registry.namespaces.contains_key(name) {
            return Err(not_found("Device Registry namespace", name));
        }
        let policies: Vec<String> = model
            .registry
            .policies_of(name)
            .map(|(p, _)| p.name.clone())
            .collect();
        for policy in &policies {
            let id = format!("{name}/{policy}");
            self.store().delete(kind::REGISTRY_POLICY, &id)?;
            self.store().delete(kind::REGISTRY_KEY, &id)?;
        }
        let links: Vec<String> = model
            .registry
            .links
            .iter()
            .filter(|(_, l)| l.namespace == name)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &links {
            self.store().delete(kind::REGISTRY_LINK, key)?;
        }
        self.store().delete(kind::REGISTRY_KEY, name)?;
        self.store().delete(kind::REGISTRY_NAMESPACE, name)?;
        let registry = &mut model.registry;
        registry.policies.retain(|(ns, _), _| ns != name);
        registry.links.retain(|k, _| !links.contains(k));
        registry.namespaces.remove(name);
        Ok(())
    }

    /// Creates a credential policy in a namespace: its issuing CA (EC P-384, "CN=<namespace>
    /// <policy> Issuing CA", pathlen 0, 5 years from the cloud's now, signed by the root) is
    /// made here, once, and kept with its key in the store. The certificates it issues are
    /// valid `validity_days` (7 to 90); `key_type` is the CA's (`ECC`, the one the preview
    /// documents). Hubs linked to the namespace trust the new CA at once.
    pub fn create_credential_policy(
        &self,
        namespace: &str,
        name: &str,
        validity_days: u32,
        key_type: &str,
    ) -> Result<PolicyRecord> {
        crate::protocol::validate_policy_name(name)?;
        crate::limits::check_credential_policy(validity_days, key_type)?;
        let mut model = self.write();
        let root = model
            .registry
            .namespaces
            .get(namespace)
            .map(|n| Arc::clone(&n.root))
            .ok_or_else(|| not_found("Device Registry namespace", namespace))?;
        let key = (namespace.to_string(), name.to_string());
        if model.registry.policies.contains_key(&key) {
            return Err(Error::service(
                409,
                409_001,
                format!("Credential policy '{name}' already exists in namespace '{namespace}'."),
            ));
        }
        let now = self.clock().now();
        let issuing = root.create_intermediate(
            &format!("{namespace} {name} Issuing CA"),
            &ca_options(ISSUING_YEARS, now - BACKDATE_SECONDS, Some(0))?,
        )?;
        let record = PolicyRecord {
            namespace: namespace.to_string(),
            name: name.to_string(),
            validity_days,
            key_type: key_type.to_string(),
            issuing_ca_pem: issuing.credential().certificate().pem(),
            created: now,
        };
        let id = format!("{namespace}/{name}");
        self.store().put_many(&[
            (kind::REGISTRY_POLICY, id.clone(), encode(&record)?),
            (
                kind::REGISTRY_KEY,
                id,
                encode(&key_pem(issuing.credential().key()))?,
            ),
        ])?;
        let policy = issuing_policy(&record, issuing, root.credential());
        model
            .registry
            .policies
            .insert(key, (record.clone(), policy));
        Ok(record)
    }

    /// Changes the validity of what a policy issues (ARM's PUT or PATCH of an existing
    /// policy): certificates issued from now on get the new number of days; its CA stays.
    pub fn set_credential_policy_validity(
        &self,
        namespace: &str,
        name: &str,
        validity_days: u32,
    ) -> Result<PolicyRecord> {
        let mut model = self.write();
        let key = (namespace.to_string(), name.to_string());
        let (record, policy) = model
            .registry
            .policies
            .get(&key)
            .ok_or_else(|| not_found("Credential policy", name))?;
        crate::limits::check_credential_policy(validity_days, &record.key_type)?;
        let mut updated = record.clone();
        updated.validity_days = validity_days;
        let id = format!("{namespace}/{name}");
        self.store().put(kind::REGISTRY_POLICY, &id, &updated)?;
        // The CA is the same one: share its key, change only the days.
        let root = policy.root.clone();
        let chain = format!(
            "{}{}",
            policy.issuing.credential().certificate().pem(),
            root.pem()
        );
        let issuing = CertificateAuthority::from_pem(
            chain.as_bytes(),
            policy.issuing.credential().key().pkcs8_pem().as_bytes(),
            None,
        )?;
        let fresh = Arc::new(IssuingPolicy {
            namespace: updated.namespace.clone(),
            policy: updated.name.clone(),
            validity_days,
            issuing,
            root,
        });
        model
            .registry
            .policies
            .insert(key, (updated.clone(), fresh));
        Ok(updated)
    }

    /// A policy by namespace and name.
    pub fn credential_policy(&self, namespace: &str, name: &str) -> Result<PolicyRecord> {
        self.read()
            .registry
            .policies
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(r, _)| r.clone())
            .ok_or_else(|| not_found("Credential policy", name))
    }

    /// Every policy of a namespace, by name.
    pub fn credential_policies(&self, namespace: &str) -> Result<Vec<PolicyRecord>> {
        let model = self.read();
        if !model.registry.namespaces.contains_key(namespace) {
            return Err(not_found("Device Registry namespace", namespace));
        }
        Ok(model
            .registry
            .policies_of(namespace)
            .map(|(r, _)| r.clone())
            .collect())
    }

    /// Deletes a policy and its CA key: DPS stops issuing with it and linked hubs stop
    /// trusting its CA.
    pub fn delete_credential_policy(&self, namespace: &str, name: &str) -> Result<()> {
        let mut model = self.write();
        let key = (namespace.to_string(), name.to_string());
        if !model.registry.policies.contains_key(&key) {
            return Err(not_found("Credential policy", name));
        }
        let id = format!("{namespace}/{name}");
        self.store().delete(kind::REGISTRY_POLICY, &id)?;
        self.store().delete(kind::REGISTRY_KEY, &id)?;
        model.registry.policies.remove(&key);
        Ok(())
    }

    /// Links a DPS to a namespace: enrollments of the DPS may then name the namespace's
    /// policies. A DPS links to one namespace at most (linking it again to the same one
    /// changes nothing).
    pub fn link_dps_to_namespace(&self, dps: &str, namespace: &str) -> Result<()> {
        self.link_to_namespace(LinkedKind::Dps, dps, namespace, None, None)
            .map(|_| ())
    }

    /// Links a hub to a namespace: the hub trusts devices whose chain leads to an issuing CA
    /// of the namespace's policies. A hub links to one namespace at most.
    pub fn link_hub_to_namespace(&self, hub: &str, namespace: &str) -> Result<()> {
        self.link_to_namespace(LinkedKind::Hub, hub, namespace, None, None)
            .map(|_| ())
    }

    /// Links a DPS or hub to a namespace with the identity ARM was told it uses; the link as
    /// kept. Refused (409) when the resource is linked to another namespace already.
    pub(crate) fn link_to_namespace(
        &self,
        kind_of: LinkedKind,
        resource: &str,
        namespace: &str,
        authentication_type: Option<String>,
        identity: Option<String>,
    ) -> Result<RegistryLink> {
        let mut model = self.write();
        let exists = match kind_of {
            LinkedKind::Dps => model.dps.contains_key(resource),
            LinkedKind::Hub => model.hubs.contains_key(resource),
        };
        if !exists {
            return Err(match kind_of {
                LinkedKind::Dps => not_found("provisioning service", resource),
                LinkedKind::Hub => not_found("IoT hub", resource),
            });
        }
        if !model.registry.namespaces.contains_key(namespace) {
            return Err(not_found("Device Registry namespace", namespace));
        }
        let key = kind_of.key(resource);
        if let Some(current) = model.registry.links.get(&key)
            && current.namespace != namespace
        {
            return Err(Error::service(
                409,
                409_001,
                format!(
                    "'{resource}' is already linked to the Device Registry namespace '{}'; \
                     a {} links to one namespace only",
                    current.namespace,
                    match kind_of {
                        LinkedKind::Dps => "provisioning service",
                        LinkedKind::Hub => "hub",
                    }
                ),
            ));
        }
        let link = RegistryLink {
            kind: kind_of,
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            authentication_type,
            identity,
        };
        self.store().put(kind::REGISTRY_LINK, &key, &link)?;
        model.registry.links.insert(key, link.clone());
        Ok(link)
    }

    /// A DPS's or hub's namespace link, if any.
    pub(crate) fn namespace_link(
        &self,
        kind_of: LinkedKind,
        resource: &str,
    ) -> Option<RegistryLink> {
        self.read().registry.link(kind_of, resource).cloned()
    }

    /// The policy an enrollment of `dps` names, resolved through the namespace the DPS is
    /// linked to. Refused when the DPS has no namespace (400004, DPS's own text), when a
    /// three-name reference names another namespace or another CA than the namespace's one
    /// credential, and when the namespace has no such policy.
    pub(crate) fn issuing_policy(
        &self,
        dps: &str,
        reference: &CredentialPolicyRef,
    ) -> Result<Arc<IssuingPolicy>> {
        let model = self.read();
        let link = model
            .registry
            .link(LinkedKind::Dps, dps)
            .ok_or_else(|| Error::service(400, 400_004, NO_NAMESPACE_MESSAGE))?;
        if let Some(named) = &reference.namespace
            && named != &link.namespace
        {
            return Err(Error::service(
                400,
                400_004,
                format!(
                    "The Device Registry namespace '{named}' is not the one this DPS instance is \
                     linked to ('{}').",
                    link.namespace
                ),
            ));
        }
        if let Some(ca) = &reference.certificate_authority
            && ca != CREDENTIAL_NAME
        {
            return Err(Error::service(
                400,
                400_004,
                format!(
                    "The certificate authority '{ca}' does not exist in the Device Registry \
                     namespace '{}' (its issuing CAs belong to the credential '{CREDENTIAL_NAME}').",
                    link.namespace
                ),
            ));
        }
        lookup_policy(&model.registry, &link.namespace, &reference.policy)
    }

    /// The issuing CAs a hub trusts: those of every policy of the namespace the hub (by host
    /// name) is linked to; none when it has no link.
    pub(crate) fn hub_issuing_cas(&self, hub_host: &str) -> Vec<Arc<IssuingPolicy>> {
        let model = self.read();
        let Some(hub) = model
            .hubs
            .values()
            .find(|h| h.host_name.eq_ignore_ascii_case(hub_host))
        else {
            return Vec::new();
        };
        let Some(link) = model.registry.link(LinkedKind::Hub, &hub.name) else {
            return Vec::new();
        };
        model
            .registry
            .policies_of(&link.namespace)
            .map(|(_, p)| Arc::clone(p))
            .collect()
    }

    /// A policy by namespace and name, ready to issue (a hub's renewal issues with the
    /// policy that issued the device's certificate).
    pub(crate) fn issuing_policy_by_name(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Result<Arc<IssuingPolicy>> {
        lookup_policy(&self.read().registry, namespace, policy)
    }
}

fn lookup_policy(registry: &Registry, namespace: &str, policy: &str) -> Result<Arc<IssuingPolicy>> {
    registry
        .policies
        .get(&(namespace.to_string(), policy.to_string()))
        .map(|(_, p)| Arc::clone(p))
        .ok_or_else(|| {
            // DPS's code for an enrollment field that names nothing valid (Azure documents
            // none for an unknown policy; the reference is an invalid argument either way).
            Error::service(
                400,
                400_004,
                format!(
                    "The credential policy '{policy}' does not exist in the Device Registry \
                     namespace '{namespace}'."
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::tls::EmulatorTls;

    fn open(dir: &std::path::Path) -> Cloud {
        let tls = Arc::new(EmulatorTls::load_or_create(dir, vec!["127.0.0.1".into()]).unwrap());
        let store = Arc::new(Store::open(dir).unwrap());
        Cloud::open(store, tls, "127.0.0.1".into(), true, None).unwrap()
    }

    #[test]
    fn cas_are_made_once_and_come_back_the_same_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (namespace, policy) = {
            let cloud = open(dir.path());
            let namespace = cloud
                .create_device_registry_namespace("adr-ns", "westeurope")
                .unwrap();
            let policy = cloud
                .create_credential_policy("adr-ns", "pol-1", 30, "ECC")
                .unwrap();
            (namespace, policy)
        };
        let cloud = open(dir.path());
        assert_eq!(
            cloud.device_registry_namespace("adr-ns").unwrap(),
            namespace
        );
        assert_eq!(cloud.credential_policy("adr-ns", "pol-1").unwrap(), policy);
        let issuing = cloud.issuing_policy_by_name("adr-ns", "pol-1").unwrap();
        assert_eq!(issuing.issuing_ca().pem(), policy.issuing_ca_pem);
        assert_eq!(issuing.root_ca().pem(), namespace.root_ca_pem);
        let root = Certificate::from_pem(namespace.root_ca_pem.as_bytes()).unwrap();
        assert_eq!(root.info().common_name.as_deref(), Some("adr-ns Root CA"));
        assert_eq!(
            issuing.issuing_ca().info().common_name.as_deref(),
            Some("adr-ns pol-1 Issuing CA")
        );
        assert_eq!(issuing.issuing_ca().info().path_length, Some(0));
        // The restarted CA still signs what chains to the same root.
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let request = CertificateRequest::generate("dev-1", &key).unwrap();
        let chain = issuing
            .issue(&request, "dev-1", cloud.clock().now())
            .unwrap();
        crate::pki::verify_chain(&chain[0], &chain[1..2], &[root], cloud.clock().now()).unwrap();
    }

    #[test]
    fn an_issued_chain_is_leaf_issuing_ca_root_with_the_requests_key_and_the_policys_days() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open(dir.path());
        cloud
            .create_device_registry_namespace("adr-ns", "westeurope")
            .unwrap();
        cloud
            .create_credential_policy("adr-ns", "short", 7, "ECC")
            .unwrap();
        let policy = cloud.issuing_policy_by_name("adr-ns", "short").unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcP384).unwrap();
        let request = CertificateRequest::generate("device-7", &key).unwrap();
        let now = cloud.clock().now();
        let chain = policy.issue(&request, "device-7", now).unwrap();
        assert_eq!(chain.len(), 3);
        let path = crate::pki::verify_chain(&chain[0], &chain[1..2], &chain[2..], now).unwrap();
        assert_eq!(path.len(), 3);
        let leaf = chain[0].info();
        assert_eq!(leaf.common_name.as_deref(), Some("device-7"));
        assert!(crate::pki::issue::key_matches(&chain[0], &key));
        assert_eq!(leaf.not_after - leaf.not_before, 7 * 86_400);
        assert!(leaf.not_before <= now && leaf.not_after > now + 6 * 86_400);
        // Past the policy's days the leaf no longer verifies.
        assert!(
            crate::pki::verify_chain(&chain[0], &chain[1..2], &chain[2..], now + 8 * 86_400)
                .is_err()
        );
    }

    #[test]
    fn names_validity_key_types_and_links_are_refused_as_azure_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open(dir.path());
        for bad in ["Upper", "ab", "-ns"] {
            assert!(matches!(
                cloud.create_device_registry_namespace(bad, "x"),
                Err(Error::Config(_))
            ));
        }
        cloud.create_device_registry_namespace("ns-a", "x").unwrap();
        cloud.create_device_registry_namespace("ns-b", "x").unwrap();
        assert_eq!(
            cloud
                .create_device_registry_namespace("ns-a", "x")
                .unwrap_err()
                .error_code(),
            Some(409_001)
        );
        for days in [6, 91] {
            assert!(
                cloud
                    .create_credential_policy("ns-a", "pol", days, "ECC")
                    .is_err()
            );
        }
        assert!(
            cloud
                .create_credential_policy("ns-a", "pol", 30, "RSA")
                .is_err()
        );
        assert!(
            cloud
                .create_credential_policy("ns-a", "p_1", 30, "ECC")
                .is_err()
        );
        cloud
            .create_credential_policy("ns-a", "pol", 90, "ECC")
            .unwrap();

        cloud.create_dps("dps-1", "x").unwrap();
        let hub = cloud.create_hub("hub-1", "x", None).unwrap();
        let reference = CredentialPolicyRef {
            policy: "pol".into(),
            ..Default::default()
        };
        let refused = cloud.issuing_policy("dps-1", &reference).unwrap_err();
        assert_eq!(refused.error_code(), Some(400_004));
        assert!(
            refused.to_string().contains(NO_NAMESPACE_MESSAGE),
            "{refused}"
        );
        assert!(cloud.hub_issuing_cas(&hub.host_name).is_empty());

        cloud.link_dps_to_namespace("dps-1", "ns-a").unwrap();
        cloud.link_dps_to_namespace("dps-1", "ns-a").unwrap();
        assert_eq!(
            cloud
                .link_dps_to_namespace("dps-1", "ns-b")
                .unwrap_err()
                .error_code(),
            Some(409_001)
        );
        cloud.link_hub_to_namespace("hub-1", "ns-a").unwrap();
        assert!(cloud.link_hub_to_namespace("hub-1", "ns-b").is_err());
        assert!(cloud.link_hub_to_namespace("nope", "ns-a").is_err());

        assert_eq!(
            cloud.issuing_policy("dps-1", &reference).unwrap().policy,
            "pol"
        );
        let unknown = CredentialPolicyRef {
            policy: "other".into(),
            ..Default::default()
        };
        assert!(cloud.issuing_policy("dps-1", &unknown).is_err());
        let elsewhere = CredentialPolicyRef {
            policy: "pol".into(),
            namespace: Some("ns-b".into()),
            certificate_authority: Some("default".into()),
        };
        assert!(cloud.issuing_policy("dps-1", &elsewhere).is_err());
        let three = CredentialPolicyRef {
            namespace: Some("ns-a".into()),
            ..elsewhere
        };
        assert_eq!(cloud.issuing_policy("dps-1", &three).unwrap().policy, "pol");

        let cas = cloud.hub_issuing_cas(&hub.host_name.to_uppercase());
        assert_eq!(cas.len(), 1);
        // A policy made after the link is trusted at once (credential sync).
        cloud
            .create_credential_policy("ns-a", "pol-2", 30, "ECC")
            .unwrap();
        assert_eq!(cloud.hub_issuing_cas(&hub.host_name).len(), 2);

        // Deleting a linked resource drops its link; a new one of that name starts unlinked.
        cloud.delete_dps("dps-1").unwrap();
        cloud.create_dps("dps-1", "x").unwrap();
        assert!(cloud.issuing_policy("dps-1", &reference).is_err());
    }
}
