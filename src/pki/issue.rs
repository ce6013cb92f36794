//! Issuing certificates with Azure-correct profiles: root and intermediate CAs (roots
//! optionally name-constrained), device leaves (CN = registration id), proof-of-possession
//! (verification) certificates, CSR signing, and bulk issuance on every core.

use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::pki::cert::Certificate;
use crate::pki::csr::CertificateRequest;
use crate::pki::keys::{KeyAlgorithm, PrivateKey};
use crate::pki::registration_id::validate_registration_id;
use crate::random::fill_random;

/// Longest validity we accept, in days (100 years): anything longer is a typo.
pub(crate) const MAX_VALIDITY_DAYS: i64 = 36_500;
/// How far back `not_before` goes by default, so a verifier whose clock runs a little behind
/// the issuing machine's still accepts a brand-new certificate.
const BACKDATE_SECONDS: i64 = 5 * 60;
/// Longest CN X.509 allows (`ub-common-name`).
const MAX_CN_LEN: usize = 64;

/// A validity period in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start, Unix seconds.
    pub not_before: i64,
    /// End, Unix seconds.
    pub not_after: i64,
}

impl Validity {
    /// `days` long, starting at `not_before` (default: now, minus a few minutes of slack).
    pub fn days(days: i64, not_before: Option<i64>) -> Result<Self> {
        if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
            return Err(Error::cert(format!(
                "validity of {days} days is out of range: use 1 to {MAX_VALIDITY_DAYS} days"
            )));
        }
        let not_before = not_before.unwrap_or_else(|| now() - BACKDATE_SECONDS);
        let not_after = not_before + days * 86_400;
        for t in [not_before, not_after] {
            let ok = OffsetDateTime::from_unix_timestamp(t)
                .is_ok_and(|t| (1950..=9999).contains(&t.year()));
            if !ok {
                return Err(Error::cert(format!(
                    "validity {} to {} is outside the years X.509 can express (1950-9999)",
                    crate::pki::chain::format_time(not_before),
                    crate::pki::chain::format_time(not_after)
                )));
            }
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

pub(crate) use crate::clock::now;

/// Options for a new CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Key algorithm of the new CA.
    pub algorithm: KeyAlgorithm,
    /// Validity.
    pub validity: Validity,
    /// pathLenConstraint: how many CA levels may follow below this one (`None`: unlimited).
    pub path_length: Option<u8>,
    /// Optional organisation (O) in the subject.
    pub organization: Option<String>,
}

/// A name a constrained CA may vouch for: one permitted subtree of its critical name
/// constraints (RFC 5280 4.2.1.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermittedName {
    /// A DNS name and every name below it (`localhost` also permits `hub.localhost`).
    Dns(String),
    /// An IP network: its address and prefix length.
    Ip(std::net::IpAddr, u8),
}

impl PermittedName {
    /// Whether `host` (a DNS name or an IP address) falls within this subtree.
    pub fn permits(&self, host: &str) -> bool {
        match (self, host.parse::<std::net::IpAddr>()) {
            (PermittedName::Ip(base, prefix), Ok(ip)) => in_network(ip, *base, *prefix),
            (PermittedName::Dns(base), Err(_)) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                let base = base.trim_start_matches('.').to_ascii_lowercase();
                host == base
                    || host
                        .strip_suffix(base.as_str())
                        .is_some_and(|left| left.ends_with('.') && left.len() > 1)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for PermittedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PermittedName::Dns(name) => write!(f, "{name} (and names below it)"),
            PermittedName::Ip(ip, prefix) => write!(f, "{ip}/{prefix}"),
        }
    }
}

fn in_network(ip: std::net::IpAddr, base: std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr;
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

/// A certificate with its private key and the certificates of its issuers: what a device
/// presents, and what a CA signs with.
pub struct Credential {
    certificate: Certificate,
    key: PrivateKey,
    /// Issuer first, then its issuer, up to the root when known.
    issuers: Arc<Vec<Certificate>>,
    certificate_pem: OnceLock<String>,
    private_key_pem: OnceLock<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("certificate", &self.certificate)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Pairs a certificate with its key and issuers, checking that the key matches.
    pub fn new(
        certificate: Certificate,
        key: PrivateKey,
        issuers: Vec<Certificate>,
    ) -> Result<Self> {
        if !key_matches(&certificate, &key) {
            return Err(Error::cert(format!(
                "the private key does not belong to the certificate {}",
                crate::pki::chain::describe(&certificate)
            )));
        }
        Ok(Self::trusted(certificate, key, Arc::new(issuers)))
    }

    /// Pairs parts we just made ourselves (no key check needed).
    fn trusted(certificate: Certificate, key: PrivateKey, issuers: Arc<Vec<Certificate>>) -> Self {
        Credential {
            certificate,
            key,
            issuers,
            certificate_pem: OnceLock::new(),
            private_key_pem: OnceLock::new(),
        }
    }

    /// Loads a certificate file's contents (the certificate, optionally followed by its chain)
    /// and a key in any supported format.
    pub fn from_pem(certificate: &[u8], key: &[u8], password: Option<&[u8]>) -> Result<Self> {
        let mut certs = Certificate::all_from_bytes(certificate)?;
        let key = PrivateKey::from_bytes(key, password)?;
        let leaf = certs.remove(0);
        Self::new(leaf, key, certs)
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The issuers, nearest first.
    pub fn issuers(&self) -> &[Certificate] {
        &self.issuers
    }

    /// Certificate PEM (cached).
    pub fn certificate_pem(&self) -> &str {
        self.certificate_pem.get_or_init(|| self.certificate.pem())
    }

    /// Unencrypted PKCS#8 PEM of the key (cached).
    pub fn private_key_pem(&self) -> &str {
        self.private_key_pem.get_or_init(|| self.key.pkcs8_pem())
    }

    /// The certificate followed by its intermediates, without self-signed roots: what a device
    /// sends in its TLS handshake.
    pub fn chain_pem(&self) -> String {
        let mut out = self.certificate_pem().to_string();
        for issuer in self.sent_chain().skip(1) {
            out.push_str(&issuer.pem());
        }
        out
    }

    /// What the device sends in its TLS handshake ([`sent_by_device`]).
    pub fn sent_chain(&self) -> impl Iterator<Item = &Certificate> {
        sent_by_device(&self.certificate, &self.issuers)
    }

    /// The certificate followed by every known issuer, root included.
    pub fn full_chain_pem(&self) -> String {
        let mut out = self.certificate_pem().to_string();
        for issuer in self.issuers.iter() {
            out.push_str(&issuer.pem());
        }
        out
    }

    /// Computes the PEM encodings now, so bulk issuance pays for them on worker threads.
    fn warm_pem_cache(&self) {
        let _ = self.certificate_pem();
        let _ = self.private_key_pem();
    }
}

/// What a device holding `leaf` and `issuers` sends in its TLS handshake: the leaf, then its
/// issuers less any self-signed root (TLS stacks leave the root out, and so does dpskit).
pub(crate) fn sent_by_device<'a>(
    leaf: &'a Certificate,
    issuers: &'a [Certificate],
) -> impl Iterator<Item = &'a Certificate> {
    std::iter::once(leaf).chain(issuers.iter().filter(|c| !c.info().is_self_signed))
}

/// Whether `key` is the private half of `certificate`'s public key.
pub(crate) fn key_matches(certificate: &Certificate, key: &PrivateKey) -> bool {
    use x509_parser::prelude::FromDer;
    let ours = key.public_key_der();
    let Ok((_, ours)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ours) else {
        return false;
    };
    certificate.parsed().public_key().subject_public_key.data == ours.subject_public_key.data
}

/// A CA: certificate, key and the chain above it.
#[derive(Debug)]
pub struct CertificateAuthority {
    credential: Credential,
}

/// A device certificate with its key and chain; its CN is the registration id.
#[derive(Debug)]
pub struct DeviceCredential {
    registration_id: String,
    /// Shared, so device clients can hold it without copying keys.
    credential: Arc<Credential>,
}

impl DeviceCredential {
    /// Wraps a credential whose CN is the registration id.
    pub fn new(credential: Credential) -> Result<Self> {
        let registration_id = credential
            .certificate()
            .info()
            .common_name
            .clone()
            .ok_or_else(|| {
                Error::cert("the device certificate has no CN; DPS needs CN = registration id")
            })?;
        Ok(DeviceCredential {
            registration_id,
            credential: Arc::new(credential),
        })
    }

    /// The registration id (= CN).
    pub fn registration_id(&self) -> &str {
        &self.registration_id
    }

    /// Certificate, key and chain.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// A shared handle on the credential.
    pub fn shared_credential(&self) -> Arc<Credential> {
        Arc::clone(&self.credential)
    }
}

impl CertificateAuthority {
    /// Creates a self-signed root CA.
    pub fn create_root(common_name: &str, options: &CaOptions) -> Result<Self> {
        let key = PrivateKey::generate(options.algorithm)?;
        let params = ca_params(common_name, options, false)?;
        let cert = params
            .self_signed(key.key_pair())
            .map_err(|e| Error::cert_caused("signing the root CA failed", e))?;
        let certificate = Certificate::from_issued_der(cert.der().to_vec());
        Ok(CertificateAuthority {
            credential: Credential::trusted(certificate, key, Arc::new(Vec::new())),
        })
    }

    /// Creates a self-signed root CA with critical name constraints: the certificates it issues
    /// are trusted only for names within `permitted` (by verifiers that honour the extension,
    /// which rustls/webpki, OpenSSL and the platform verifiers do).
    pub fn create_constrained_root(
        common_name: &str,
        options: &CaOptions,
        permitted: &[PermittedName],
    ) -> Result<Self> {
        if permitted.is_empty() {
            return Err(Error::cert(
                "name constraints need at least one permitted name",
            ));
        }
        let key = PrivateKey::generate(options.algorithm)?;
        let mut params = ca_params(common_name, options, false)?;
        let permitted_subtrees = permitted
            .iter()
            .map(|name| match name {
                PermittedName::Dns(dns) => Ok(rcgen::GeneralSubtree::DnsName(dns.clone())),
                PermittedName::Ip(ip, prefix) => {
                    let bits = if ip.is_ipv4() { 32 } else { 128 };
                    if *prefix > bits {
                        return Err(Error::cert(format!("{ip}/{prefix} is not a network")));
                    }
                    Ok(rcgen::GeneralSubtree::IpAddress(
                        rcgen::CidrSubnet::from_addr_prefix(*ip, *prefix),
                    ))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees,
            excluded_subtrees: Vec::new(),
        });
        let cert = params
            .self_signed(key.key_pair())
            .map_err(|e| Error::cert_caused("signing the root CA failed", e))?;
        let certificate = Certificate::from_issued_der(cert.der().to_vec());
        Ok(CertificateAuthority {
            credential: Credential::trusted(certificate, key, Arc::new(Vec::new())),
        })
    }

    /// Uses an existing certificate and key as a CA; the certificate must be a CA allowed to
    /// sign certificates.
    pub fn from_credential(credential: Credential) -> Result<Self> {
        let info = credential.certificate().info();
        let name = crate::pki::chain::describe(credential.certificate());
        if !info.is_ca {
            return Err(Error::cert(format!(
                "{name} is not a CA certificate (basicConstraints CA:TRUE missing): it cannot issue certificates"
            )));
        }
        if !info.key_usage.is_empty() && !info.key_usage.iter().any(|u| u == "keyCertSign") {
            return Err(Error::cert(format!(
                "{name} lacks keyCertSign in its keyUsage: it cannot issue certificates"
            )));
        }
        Ok(CertificateAuthority { credential })
    }

    /// Loads a CA from PEM/DER certificate data (optionally followed by its chain) and a key.
    pub fn from_pem(certificate: &[u8], key: &[u8], password: Option<&[u8]>) -> Result<Self> {
        Self::from_credential(Credential::from_pem(certificate, key, password)?)
    }

    /// Certificate, key and chain.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The CA's CN (or its whole subject when it has no CN).
    pub fn common_name(&self) -> String {
        let info = self.credential.certificate().info();
        info.common_name
            .clone()
            .unwrap_or_else(|| info.subject.clone())
    }

    /// The certificates above this CA's own issuer chain, for the certificates it issues.
    fn chain_for_children(&self) -> Arc<Vec<Certificate>> {
        let mut chain = Vec::with_capacity(self.credential.issuers().len() + 1);
        chain.push(self.credential.certificate().clone());
        chain.extend(self.credential.issuers().iter().cloned());
        Arc::new(chain)
    }

    fn rcgen_issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(
            &self.credential.certificate().der().into(),
            self.credential.key().key_pair(),
        )
        .map_err(|e| Error::cert_caused("cannot sign with this CA certificate", e))
    }

    /// Creates an intermediate CA signed by this CA.
    pub fn create_intermediate(&self, common_name: &str, options: &CaOptions) -> Result<Self> {
        if let Some(limit) = self.credential.certificate().info().path_length {
            let requested = options.path_length.map(u32::from);
            if limit == 0 || requested.is_none_or(|r| r >= limit) {
                return Err(Error::cert(format!(
                    "'{}' has pathLenConstraint {limit}: an intermediate below it needs path_length < {limit}{}",
                    self.common_name(),
                    if limit == 0 {
                        ", so it can only issue devices; create the parent with a larger path_length"
                    } else {
                        ""
                    }
                )));
            }
        }
        let key = PrivateKey::generate(options.algorithm)?;
        let params = ca_params(common_name, options, true)?;
        let cert = params
            .signed_by(key.key_pair(), &self.rcgen_issuer()?)
            .map_err(|e| Error::cert_caused("signing the intermediate CA failed", e))?;
        let certificate = Certificate::from_issued_der(cert.der().to_vec());
        Ok(CertificateAuthority {
            credential: Credential::trusted(certificate, key, self.chain_for_children()),
        })
    }

    /// Issues one device certificate with CN = `registration_id`.
    pub fn issue_device(
        &self,
        registration_id: &str,
        algorithm: KeyAlgorithm,
        validity: Validity,
    ) -> Result<DeviceCredential> {
        validate_registration_id(registration_id, true)?;
        let issuer = self.rcgen_issuer()?;
        self.issue_device_with(
            &issuer,
            &self.chain_for_children(),
            registration_id,
            algorithm,
            validity,
        )
    }

    fn issue_device_with(
        &self,
        issuer: &Issuer<'_, &KeyPair>,
        chain: &Arc<Vec<Certificate>>,
        registration_id: &str,
        algorithm: KeyAlgorithm,
        validity: Validity,
    ) -> Result<DeviceCredential> {
        let key = PrivateKey::generate(algorithm)?;
        let cert = leaf_params(registration_id, validity)?
            .signed_by(key.key_pair(), issuer)
            .map_err(|e| Error::cert_caused("signing the device certificate failed", e))?;
        let certificate = Certificate::from_issued_der(cert.der().to_vec());
        Ok(DeviceCredential {
            registration_id: registration_id.to_string(),
            credential: Arc::new(Credential::trusted(certificate, key, Arc::clone(chain))),
        })
    }

    /// Issues many device certificates in parallel on every core; results keep the input
    /// order. Every id is validated before any key is generated.
    pub fn issue_devices(
        &self,
        registration_ids: &[String],
        algorithm: KeyAlgorithm,
        validity: Validity,
    ) -> Result<Vec<DeviceCredential>> {
        let mut seen = std::collections::HashSet::with_capacity(registration_ids.len());
        for (index, id) in registration_ids.iter().enumerate() {
            validate_registration_id(id, true)
                .map_err(|e| Error::cert_caused(format!("registration id #{index}"), e))?;
            // DPS ids are case-insensitive, so two ids differing only in case collide there.
            if !seen.insert(id.to_ascii_lowercase()) {
                return Err(Error::cert(format!(
                    "registration id #{index} {id:?} appears twice (DPS ids are case-insensitive)"
                )));
            }
        }
        let chain = self.chain_for_children();
        let workers = std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
            .min(registration_ids.len().max(1));
        let chunk = registration_ids.len().div_ceil(workers).max(1);
        let results: Vec<Result<Vec<DeviceCredential>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = registration_ids
                .chunks(chunk)
                .map(|ids| {
                    let chain = &chain;
                    scope.spawn(move || {
                        let issuer = self.rcgen_issuer()?;
                        ids.iter()
                            .map(|id| {
                                let device = self
                                    .issue_device_with(&issuer, chain, id, algorithm, validity)?;
                                device.credential.warm_pem_cache();
                                Ok(device)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::cert("a certificate worker thread panicked"))
                    })
                })
                .collect()
        });
        let mut devices = Vec::with_capacity(registration_ids.len());
        for part in results {
            devices.extend(part?);
        }
        Ok(devices)
    }

    /// Issues a TLS server certificate covering `hosts` (DNS names or IP addresses), as the
    /// emulator's listeners present it; its key is EC P-256.
    pub fn issue_server(&self, hosts: &[String], validity: Validity) -> Result<Credential> {
        let first = hosts
            .first()
            .ok_or_else(|| Error::cert("a server certificate needs at least one host name"))?;
        let mut params = leaf_params(first, validity)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
                Err(_) => rcgen::string::Ia5String::try_from(host.as_str())
                    .map(rcgen::SanType::DnsName)
                    .map_err(|_| Error::cert(format!("{host:?} is not a valid DNS name"))),
            })
            .collect::<Result<_>>()?;
        let key = PrivateKey::generate(KeyAlgorithm::EcP256)?;
        let cert = params
            .signed_by(key.key_pair(), &self.rcgen_issuer()?)
            .map_err(|e| Error::cert_caused("signing the server certificate failed", e))?;
        let certificate = Certificate::from_issued_der(cert.der().to_vec());
        Ok(Credential::trusted(
            certificate,
            key,
            self.chain_for_children(),
        ))
    }

    /// Makes the proof-of-possession certificate for DPS: CN = the verification code DPS
    /// issued, signed by this CA's key (root or intermediate alike).
    pub fn create_verification_certificate(
        &self,
        code: &str,
        validity: Validity,
    ) -> Result<Certificate> {
        let code = code.trim();
        if code.is_empty() {
            return Err(Error::cert("the verification code is empty"));
        }
        if code.chars().count() > MAX_CN_LEN {
            return Err(Error::cert(format!(
                "the verification code is {} characters; a CN holds at most {MAX_CN_LEN} (is it the code DPS returned?)",
                code.chars().count()
            )));
        }
        if let Some(bad) = code.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(Error::cert(format!(
                "the verification code contains {bad:?}; DPS codes are ASCII letters and digits"
            )));
        }
        // The verification certificate's own key is never used again: P-256 is the cheapest.
        let key = PrivateKey::generate(KeyAlgorithm::EcP256)?;
        let cert = leaf_params(code, validity)?
            .signed_by(key.key_pair(), &self.rcgen_issuer()?)
            .map_err(|e| Error::cert_caused("signing the verification certificate failed", e))?;
        Ok(Certificate::from_issued_der(cert.der().to_vec()))
    }

    /// Signs a device's CSR (PEM or DER) with the device profile. The CN comes from the CSR
    /// unless `registration_id` overrides it; either way it must be a valid registration id.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        registration_id: Option<&str>,
        validity: Validity,
    ) -> Result<Certificate> {
        let request = CertificateRequest::from_pem_or_der(csr)?;
        let cn = match registration_id {
            Some(id) => id.to_string(),
            None => request.common_name().map(str::to_string).ok_or_else(|| {
                Error::cert("the CSR has no CN: pass the registration id explicitly")
            })?,
        };
        self.issue_for_request(&request, &cn, validity)
    }

    /// Issues a device certificate for `request`'s key with CN = `registration_id` (which
    /// must be a valid one), whatever subject the request asked for: the caller has judged
    /// the request already.
    pub fn issue_for_request(
        &self,
        request: &CertificateRequest,
        registration_id: &str,
        validity: Validity,
    ) -> Result<Certificate> {
        validate_registration_id(registration_id, true)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(request.public_key_der())
            .map_err(|e| Error::cert_caused("unsupported public key in the CSR", e))?;
        let cert = leaf_params(registration_id, validity)?
            .signed_by(&public_key, &self.rcgen_issuer()?)
            .map_err(|e| Error::cert_caused("signing the CSR failed", e))?;
        Ok(Certificate::from_issued_der(cert.der().to_vec()))
    }
}

fn random_serial() -> Result<SerialNumber> {
    let mut serial = [0u8; 16];
    fill_random(&mut serial)?;
    Ok(SerialNumber::from_slice(&serial))
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<()> {
    let convert = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| Error::cert_caused("invalid validity time", e))
    };
    params.not_before = convert(validity.not_before)?;
    params.not_after = convert(validity.not_after)?;
    Ok(())
}

fn subject(common_name: &str, organization: Option<&str>) -> Result<DistinguishedName> {
    let trimmed = common_name.trim();
    if trimmed.is_empty() {
        return Err(Error::cert("the common name (CN) is empty"));
    }
    if trimmed.chars().count() > MAX_CN_LEN {
        return Err(Error::cert(format!(
            "the common name {trimmed:?} is longer than {MAX_CN_LEN} characters"
        )));
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, trimmed);
    if let Some(org) = organization.map(str::trim).filter(|o| !o.is_empty()) {
        name.push(DnType::OrganizationName, org);
    }
    Ok(name)
}

fn ca_params(common_name: &str, options: &CaOptions, with_aki: bool) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name, options.organization.as_deref())?;
    params.is_ca = IsCa::Ca(match options.path_length {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = with_aki;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, options.validity)?;
    Ok(params)
}

fn leaf_params(common_name: &str, validity: Validity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name, None)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, validity)?;
    Ok(params)
}
