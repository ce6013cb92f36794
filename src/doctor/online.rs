//! The online checks against a DPS: what DPS holds about this device, read through the same
//! management and service clients dpskit uses everywhere (ARM: the DPS resource, its linked
//! hubs, its CA certificates and keys; the DPS service API: the individual enrollment, the
//! groups, the registration record; the assigned hub's service API: the device identity).
//! Which enrollment DPS would pick is predicted with the rule the emulator decides with
//! (`crate::diagnosis::enrollment`). A service that cannot be read skips the checks that need
//! it, with the error as evidence: it never becomes a problem blamed on the device.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::diagnosis::credential::HeldCredential;
use crate::diagnosis::enrollment::{self, CaTrust, EnrolledCertificate};
use crate::diagnosis::{Cause, Check};
use crate::error::Error;
use crate::pki::Certificate;
use crate::pki::chain::describe;
use crate::pki::issue::sent_by_device;
use crate::protocol::dps_service::{
    AttestationType, DeviceRegistrationState, EnrollmentGroup, EnrollmentPolicies,
    IndividualEnrollment, ProvisioningStatus, X509CertificateWithInfo,
};
use crate::protocol::hub_service::DeviceIdentity;
use crate::service::arm::{ArmClient, DpsResource};
use crate::service::{DpsServiceClient, HubServiceClient};
use crate::transport::Trust;

/// The DPS the online checks read, through ARM (its resource, CA certificates and keys) and
/// then its service API and its hubs' service APIs.
#[derive(Clone)]
pub struct OnlineTarget {
    /// The management client of the subscription and resource group.
    pub arm: ArmClient,
    /// The DPS resource's name.
    pub dps_name: String,
    /// What the service APIs' TLS is checked against.
    pub trust: Trust,
}

const CA_ID: &str = "dps.ca_certificates";
const CA_TITLE: &str = "Uploaded CA certificates of the chain";
const INDIVIDUAL_ID: &str = "enrollment.individual";
const INDIVIDUAL_TITLE: &str = "Individual enrollment for the registration id";
const MATCH_ID: &str = "enrollment.match";
const MATCH_TITLE: &str = "The enrollment group DPS would pick";
const VERIFIED_ID: &str = "enrollment.ca_verified";
const VERIFIED_TITLE: &str = "The enrollment's CA is verified";
const ENABLED_ID: &str = "enrollment.enabled";
const ENABLED_TITLE: &str = "The enrollment is enabled";
const HUBS_ID: &str = "enrollment.hubs";
const HUBS_TITLE: &str = "Linked hubs the enrollment can assign";
const RECORD_ID: &str = "registration.record";
const RECORD_TITLE: &str = "DPS's registration record";
const IDENTITY_ID: &str = "hub.identity";
const IDENTITY_TITLE: &str = "The device identity in the assigned hub";

/// Every check id this module reports, in order.
pub const CHECK_IDS: [&str; 8] = [
    CA_ID,
    INDIVIDUAL_ID,
    MATCH_ID,
    VERIFIED_ID,
    ENABLED_ID,
    HUBS_ID,
    RECORD_ID,
    IDENTITY_ID,
];

fn title_of(id: &'static str) -> &'static str {
    match id {
        CA_ID => CA_TITLE,
        INDIVIDUAL_ID => INDIVIDUAL_TITLE,
        MATCH_ID => MATCH_TITLE,
        VERIFIED_ID => VERIFIED_TITLE,
        ENABLED_ID => ENABLED_TITLE,
        HUBS_ID => HUBS_TITLE,
        RECORD_ID => RECORD_TITLE,
        _ => IDENTITY_TITLE,
    }
}

fn skipped(id: &'static str, why: &str) -> Check {
    Check::skipped(id, title_of(id), why)
}

/// An uploaded CA certificate as read from ARM.
struct Uploaded {
    name: String,
    verified: bool,
    certificate: Certificate,
}

/// A certificate an enrollment names: its body when known (given, uploaded, or found among the
/// device's certificates by thumbprint), else Azure's description of it.
#[derive(Clone)]
enum Named {
    Known {
        certificate: Certificate,
        label: String,
    },
    Described {
        subject: String,
        sha1: String,
        sha256: String,
        label: String,
        /// Known certificates with the same subject and other thumbprints: when one of them
        /// issued a certificate, the described one (another certificate) is taken not to.
        look_alikes: Vec<Certificate>,
    },
}

impl Named {
    fn certificate(&self) -> Option<&Certificate> {
        match self {
            Named::Known { certificate, .. } => Some(certificate),
            Named::Described { .. } => None,
        }
    }
}

/// Distinguished names as Azure and dpskit print them differ in spacing only.
fn same_name(a: &str, b: &str) -> bool {
    let squeeze = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    squeeze(a) == squeeze(b)
}

fn same_thumbprint(certificate: &Certificate, sha1: &str, sha256: &str) -> bool {
    let info = certificate.info();
    (!sha1.is_empty() && info.thumbprint_sha1.eq_ignore_ascii_case(sha1))
        || (!sha256.is_empty() && info.thumbprint_sha256.eq_ignore_ascii_case(sha256))
}

impl EnrolledCertificate for Named {
    fn is(&self, certificate: &Certificate) -> bool {
        match self {
            Named::Known { certificate: c, .. } => c.is(certificate),
            Named::Described { sha1, sha256, .. } => same_thumbprint(certificate, sha1, sha256),
        }
    }

    /// A description carries no key: its subject naming the issuer is all that can be told,
    /// unless another certificate of that name, known here, is the issuer.
    fn issued(&self, certificate: &Certificate) -> bool {
        match self {
            Named::Known { certificate: c, .. } => c.issued(certificate),
            Named::Described {
                subject,
                look_alikes,
                ..
            } => {
                same_name(subject, &certificate.info().issuer)
                    && !look_alikes.iter().any(|l| l.issued(certificate))
            }
        }
    }
}

/// Reads a certificate as ARM or a client sends it: base64 DER, or PEM text.
fn parse_certificate(text: &str) -> Result<Certificate, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    match BASE64.decode(compact.as_bytes()) {
        Ok(der) => Certificate::from_der(&der).map_err(|e| e.to_string()),
        Err(_) => Certificate::all_from_bytes(text.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|all| {
                all.into_iter()
                    .next()
                    .ok_or_else(|| "no certificate in it".to_string())
            }),
    }
}

/// An enrollment's certificate entry resolved to a body where one can be had: the body given,
/// else a certificate of `known` with the described thumbprint. Unreadable bodies are
/// reported in `unreadable`.
fn resolve_entry(
    entry: &X509CertificateWithInfo,
    label: String,
    known: &[Certificate],
    unreadable: &mut Vec<String>,
) -> Option<Named> {
    if let Some(text) = &entry.certificate {
        match parse_certificate(text) {
            Ok(certificate) => return Some(Named::Known { certificate, label }),
            Err(e) => {
                unreadable.push(format!("{label}: {e}"));
                return None;
            }
        }
    }
    let info = entry.info.as_ref()?;
    if let Some(found) = known
        .iter()
        .find(|c| same_thumbprint(c, &info.sha1_thumbprint, &info.sha256_thumbprint))
    {
        return Some(Named::Known {
            certificate: found.clone(),
            label,
        });
    }
    Some(Named::Described {
        subject: info.subject_name.clone(),
        sha1: info.sha1_thumbprint.clone(),
        sha256: info.sha256_thumbprint.clone(),
        label,
        look_alikes: known
            .iter()
            .filter(|c| same_name(&c.info().subject, &info.subject_name))
            .cloned()
            .collect(),
    })
}

/// One X.509 enrollment group as the doctor reads it.
struct Group {
    id: String,
    certificates: Vec<Named>,
    /// CA references naming no uploaded CA.
    dangling: Vec<String>,
    policies: EnrollmentPolicies,
}

fn group_of(
    group: EnrollmentGroup,
    known: &[Certificate],
    uploaded: &[Uploaded],
    unreadable: &mut Vec<String>,
) -> Option<Group> {
    let id = group.enrollment_group_id.clone().unwrap_or_default();
    // A group answered without its attestation cannot be judged: it is named as unreadable,
    // not dropped, so "no group matches" never rests on a group nobody read.
    let Some(attestation) = group.attestation.as_ref() else {
        unreadable.push(format!(
            "enrollment group '{id}': answered without an attestation"
        ));
        return None;
    };
    if attestation.kind != AttestationType::X509 {
        return None;
    }
    let x509 = attestation.x509.clone().unwrap_or_default();
    let mut certificates = Vec::new();
    let mut dangling = Vec::new();
    if let Some(signing) = &x509.signing_certificates {
        for (entry, which) in signing
            .primary
            .iter()
            .map(|e| (e, "primary"))
            .chain(signing.secondary.iter().map(|e| (e, "secondary")))
        {
            let label = format!("its {which} signing certificate");
            certificates.extend(resolve_entry(entry, label, known, unreadable));
        }
    }
    if let Some(references) = &x509.ca_references {
        for name in references.primary.iter().chain(references.secondary.iter()) {
            match uploaded.iter().find(|u| &u.name == name) {
                Some(u) => certificates.push(Named::Known {
                    certificate: u.certificate.clone(),
                    label: format!("uploaded CA '{name}'"),
                }),
                None => dangling.push(name.clone()),
            }
        }
    }
    Some(Group {
        id,
        certificates,
        dangling,
        policies: group.policies,
    })
}

fn named_text(named: &Named) -> String {
    match named {
        Named::Known { certificate, label } => format!("{label} {}", describe(certificate)),
        Named::Described { subject, label, .. } => format!("{label} '{subject}'"),
    }
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Service(s) if s.status == 404)
}

/// The certificates the device sends in its handshake, as held (the first is the leaf).
fn sent_chain(held: &[Certificate]) -> Vec<Certificate> {
    match held.split_first() {
        Some((leaf, issuers)) => sent_by_device(leaf, issuers).cloned().collect(),
        None => Vec::new(),
    }
}

/// The X.509 groups as candidates, each certificate they name resolved against what the
/// device holds and what is uploaded; the names of certificates that could not be read.
fn x509_groups(
    groups: Vec<EnrollmentGroup>,
    held: &[Certificate],
    uploaded: &[Uploaded],
) -> (Vec<Group>, Vec<String>) {
    let known: Vec<Certificate> = held
        .iter()
        .cloned()
        .chain(uploaded.iter().map(|u| u.certificate.clone()))
        .collect();
    let mut unreadable = Vec::new();
    let groups = groups
        .into_iter()
        .filter_map(|g| group_of(g, &known, uploaded, &mut unreadable))
        .collect();
    (groups, unreadable)
}

/// The enrollment DPS would pick, for the checks after the enrollment checks.
struct Picked {
    /// `enrollment group 'x'` or `individual enrollment 'y'`.
    what: String,
    policies: EnrollmentPolicies,
}

/// Every online check, in a fixed order.
pub async fn check(
    target: &OnlineTarget,
    credential: &HeldCredential,
    registration_id: &str,
    now: i64,
) -> Vec<Check> {
    let held = &credential.certificates;
    let sent = sent_chain(held);
    let Some(leaf) = sent.first().cloned() else {
        return CHECK_IDS
            .iter()
            .map(|id| skipped(id, "no certificate held"))
            .collect();
    };
    let arm = &target.arm;
    let dps = match arm.dps(&target.dps_name).await {
        Ok(dps) => dps,
        Err(e) => {
            let why = format!("the DPS resource could not be read: {e}");
            return CHECK_IDS.iter().map(|id| skipped(id, &why)).collect();
        }
    };
    let mut checks = Vec::new();
    let mut unreadable = Vec::new();
    let uploaded = match arm.ca_certificates(&target.dps_name).await {
        Ok(list) => {
            let mut out = Vec::new();
            for ca in list {
                match ca.certificate.as_deref().map(parse_certificate) {
                    Some(Ok(certificate)) => out.push(Uploaded {
                        name: ca.name,
                        verified: ca.is_verified,
                        certificate,
                    }),
                    Some(Err(e)) => unreadable.push(format!("uploaded CA '{}': {e}", ca.name)),
                    None => unreadable.push(format!(
                        "uploaded CA '{}': ARM returned no certificate body",
                        ca.name
                    )),
                }
            }
            checks.push(ca_check(held, &out, &unreadable));
            Some(out)
        }
        Err(e) => {
            checks.push(skipped(
                CA_ID,
                &format!("the CA certificates could not be listed: {e}"),
            ));
            None
        }
    };
    let service = match service_client(target, &dps).await {
        Ok(client) => client,
        Err(why) => {
            checks.extend(CHECK_IDS[1..].iter().map(|id| skipped(id, &why)));
            return checks;
        }
    };
    let decided = decide(
        &service,
        held,
        &sent,
        registration_id,
        uploaded.as_deref(),
        credential.source.is_pkcs12(),
        now,
        &mut checks,
    )
    .await;
    checks.push(hubs_check(decided.as_ref(), &dps));
    let record = match service
        .registration::<DeviceRegistrationState>(registration_id)
        .await
    {
        Ok(record) => {
            checks.push(record_check(&record));
            Some(record)
        }
        Err(e) if is_not_found(&e) => {
            checks.push(Check::ok(
                RECORD_ID,
                RECORD_TITLE,
                format!("never registered: DPS holds no record of '{registration_id}'"),
            ));
            None
        }
        Err(e) => {
            checks.push(skipped(
                RECORD_ID,
                &format!("the registration record could not be read: {e}"),
            ));
            None
        }
    };
    checks.push(identity_check(target, &dps, record.as_ref(), &leaf).await);
    checks
}

async fn service_client(
    target: &OnlineTarget,
    dps: &DpsResource,
) -> Result<DpsServiceClient, String> {
    let keys = target
        .arm
        .dps_keys(&target.dps_name)
        .await
        .map_err(|e| format!("the DPS keys could not be read: {e}"))?;
    let connection = format!(
        "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
        dps.service_operations_host_name, keys.key_name, keys.primary_key
    );
    DpsServiceClient::from_connection_string(&connection, None, &target.trust)
        .map_err(|e| format!("the DPS service client could not be made: {e}"))
}

/// `dps.ca_certificates`: the uploaded CAs in or above the device's chain.
fn ca_check(held: &[Certificate], uploaded: &[Uploaded], unreadable: &[String]) -> Check {
    // Walks up from the held certificates through the uploaded ones, so a root uploaded
    // above an uploaded intermediate counts too.
    let mut reached: Vec<Certificate> = held.to_vec();
    let mut related: Vec<&Uploaded> = Vec::new();
    loop {
        let before = related.len();
        for u in uploaded {
            if related.iter().any(|r| r.name == u.name) {
                continue;
            }
            if reached
                .iter()
                .any(|c| *c == u.certificate || u.certificate.issued(c))
            {
                related.push(u);
                reached.push(u.certificate.clone());
            }
        }
        if related.len() == before {
            break;
        }
    }
    let mut evidence = if related.is_empty() {
        format!(
            "none of the {} uploaded CA certificate(s) is in or above the chain of {}",
            uploaded.len(),
            describe(&held[0])
        )
    } else {
        related
            .iter()
            .map(|u| {
                format!(
                    "'{}' {}: {}",
                    u.name,
                    describe(&u.certificate),
                    if u.verified {
                        "verified"
                    } else {
                        "not verified"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !unreadable.is_empty() {
        evidence.push_str(&format!(" (unreadable: {})", unreadable.join("; ")));
    }
    if related.is_empty() {
        Check::warning(
            CA_ID,
            CA_TITLE,
            None,
            evidence,
            "Upload (and verify) the root or intermediate CA that issued this device's certificate, \
             unless its enrollment names the CA inline.",
        )
    } else {
        Check::ok(CA_ID, CA_TITLE, evidence)
    }
}

/// The enrollment checks: individual, match, CA verified, enabled. Returns the pick.
#[allow(clippy::too_many_arguments)]
async fn decide(
    service: &DpsServiceClient,
    held: &[Certificate],
    sent: &[Certificate],
    registration_id: &str,
    uploaded: Option<&[Uploaded]>,
    pkcs12: bool,
    now: i64,
    checks: &mut Vec<Check>,
) -> Option<Picked> {
    let later = [MATCH_ID, VERIFIED_ID, ENABLED_ID];
    let individual = match service
        .enrollment::<IndividualEnrollment>(registration_id)
        .await
    {
        Ok(e) => Some(e),
        Err(e) if is_not_found(&e) => None,
        Err(e) => {
            let why = format!("the individual enrollment could not be read: {e}");
            checks.push(skipped(INDIVIDUAL_ID, &why));
            checks.extend(later.iter().map(|id| skipped(id, &why)));
            return None;
        }
    };
    if let Some(enrollment) = individual {
        checks.push(individual_check(&enrollment, held, sent, now));
        checks.push(skipped(
            MATCH_ID,
            "an individual enrollment exists for this id: DPS does not look at the groups",
        ));
        checks.push(skipped(
            VERIFIED_ID,
            "an individual enrollment names the device's own certificate: no CA is involved",
        ));
        let what = format!("individual enrollment '{registration_id}'");
        checks.push(enabled_check(&what, &enrollment.policies));
        return Some(Picked {
            what,
            policies: enrollment.policies,
        });
    }
    checks.push(Check::ok(
        INDIVIDUAL_ID,
        INDIVIDUAL_TITLE,
        format!("none for '{registration_id}': enrollment groups decide"),
    ));
    let Some(uploaded) = uploaded else {
        let why = "the CA certificates could not be listed, and groups name them";
        checks.extend(later.iter().map(|id| skipped(id, why)));
        return None;
    };
    let groups = match service.enrollment_groups::<EnrollmentGroup>().await {
        Ok(groups) => groups,
        Err(e) => {
            let why = format!("the enrollment groups could not be listed: {e}");
            checks.extend(later.iter().map(|id| skipped(id, &why)));
            return None;
        }
    };
    let (groups, unreadable) = x509_groups(groups, held, uploaded);
    let sets: Vec<&[Named]> = groups.iter().map(|g| g.certificates.as_slice()).collect();
    let walk = enrollment::pick_group(sent, &sets);
    let listing = groups_listing(&groups, &unreadable);
    let stop = walk.path.last().unwrap_or(&sent[0]);
    let Some((g, c)) = walk.pick else {
        checks.push(no_match(sent, held, uploaded, &walk.path, pkcs12, &listing));
        let why = "no enrollment is picked";
        checks.push(skipped(VERIFIED_ID, why));
        checks.push(skipped(ENABLED_ID, why));
        return None;
    };
    let mut groups = groups;
    let group = groups.swap_remove(g);
    // The walk's indices are into these very groups.
    let named = group.certificates.get(c).cloned()?;
    let level = if named.is(stop) {
        format!("it is {} of the chain sent", describe(stop))
    } else {
        format!("it issued {}", describe(stop))
    };
    checks.push(Check::ok(
        MATCH_ID,
        MATCH_TITLE,
        format!("group '{}' on {}: {level}", group.id, named_text(&named)),
    ));
    checks.push(verified_check(&group, &named, sent, uploaded, now));
    let what = format!("enrollment group '{}'", group.id);
    checks.push(enabled_check(&what, &group.policies));
    Some(Picked {
        what,
        policies: group.policies,
    })
}

fn groups_listing(groups: &[Group], unreadable: &[String]) -> String {
    let mut listing = if groups.is_empty() {
        "the DPS has no X.509 enrollment group".to_string()
    } else {
        groups
            .iter()
            .map(|g| {
                let mut names: Vec<String> = g.certificates.iter().map(named_text).collect();
                names.extend(
                    g.dangling
                        .iter()
                        .map(|n| format!("CA '{n}' (not uploaded)")),
                );
                if names.is_empty() {
                    names.push("no certificate".into());
                }
                format!("group '{}' names {}", g.id, names.join(" and "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !unreadable.is_empty() {
        listing.push_str(&format!(" (unreadable: {})", unreadable.join("; ")));
    }
    listing
}

fn missing_chain(pkcs12: bool) -> Cause {
    if pkcs12 {
        Cause::Pkcs12WithoutChain
    } else {
        Cause::MissingIntermediate
    }
}

/// `enrollment.match` when no group is met: names why.
fn no_match(
    sent: &[Certificate],
    held: &[Certificate],
    uploaded: &[Uploaded],
    path: &[Certificate],
    pkcs12: bool,
    listing: &str,
) -> Check {
    let leaf = &sent[0];
    let top = path.last().unwrap_or(leaf);
    let stops = format!(
        "the chain sent stops at {}, issued by '{}'",
        describe(top),
        top.info().issuer
    );
    let leaf_alone = sent.len() == 1 && !leaf.info().is_self_signed;
    let reaches_upload = uploaded
        .iter()
        .any(|u| path.contains(&u.certificate) || u.certificate.issued(top));
    let holds_root = held
        .iter()
        .any(|c| c.info().is_self_signed && (path.contains(c) || c.issued(top)));
    let (cause, fix) = if leaf_alone {
        (
            missing_chain(pkcs12),
            if pkcs12 {
                "Export the PKCS#12 file with its intermediate certificates (openssl pkcs12 -export \
                 -certfile chain.pem), so the device sends them."
            } else {
                "Send the intermediate certificates after the device certificate (append them to \
                 its certificate file or give the chain file)."
            },
        )
    } else if reaches_upload || top.info().is_self_signed || holds_root {
        (
            Cause::WrongCaInGroup,
            "Point an enrollment group at a CA of this device's chain (or issue the device from \
             the CA the group names).",
        )
    } else {
        (
            missing_chain(pkcs12),
            "Send every intermediate up to the CA the enrollment group names.",
        )
    };
    Check::problem(
        MATCH_ID,
        MATCH_TITLE,
        cause,
        format!("no group matches: {stops}; {listing}"),
        fix,
    )
}

fn individual_check(
    enrollment: &IndividualEnrollment,
    held: &[Certificate],
    sent: &[Certificate],
    now: i64,
) -> Check {
    let id = enrollment.registration_id.clone().unwrap_or_default();
    let mismatch = |evidence: String| {
        Check::problem(
            INDIVIDUAL_ID,
            INDIVIDUAL_TITLE,
            Cause::IndividualEnrollmentMismatch,
            evidence,
            "Put this device's certificate in its individual enrollment, or delete the \
             individual enrollment so its group decides.",
        )
    };
    let Some(attestation) = &enrollment.attestation else {
        return mismatch(format!("individual enrollment '{id}' has no attestation"));
    };
    if attestation.kind != AttestationType::X509 {
        return mismatch(format!(
            "individual enrollment '{id}' uses {:?} attestation, not X.509; it beats every group",
            attestation.kind
        ));
    }
    let mut unreadable = Vec::new();
    let named: Vec<Named> = attestation
        .x509
        .as_ref()
        .and_then(|x| x.client_certificates.as_ref())
        .map(|certs| {
            certs
                .entries()
                .filter_map(|e| {
                    resolve_entry(e, "its client certificate".into(), held, &mut unreadable)
                })
                .collect()
        })
        .unwrap_or_default();
    let bodies: Vec<Certificate> = named
        .iter()
        .filter_map(|n| n.certificate().cloned())
        .collect();
    let names = named
        .iter()
        .map(named_text)
        .collect::<Vec<_>>()
        .join(" and ");
    if enrollment::individual_accepts(sent, &bodies, now) {
        Check::ok(
            INDIVIDUAL_ID,
            INDIVIDUAL_TITLE,
            format!("individual enrollment '{id}' names {names}: it accepts this certificate"),
        )
    } else {
        let mut evidence = format!(
            "individual enrollment '{id}' names {}, not {} (SHA-1 {}) nor a CA the chain sent reaches",
            if names.is_empty() {
                "no certificate".into()
            } else {
                names
            },
            describe(&sent[0]),
            sent[0].info().thumbprint_sha1
        );
        if !unreadable.is_empty() {
            evidence.push_str(&format!(" (unreadable: {})", unreadable.join("; ")));
        }
        mismatch(evidence)
    }
}

fn verified_check(
    group: &Group,
    named: &Named,
    sent: &[Certificate],
    uploaded: &[Uploaded],
    now: i64,
) -> Check {
    let Some(certificate) = named.certificate() else {
        return Check::warning(
            VERIFIED_ID,
            VERIFIED_TITLE,
            None,
            format!(
                "group '{}' names {} which DPS describes without its body, and no certificate \
                 held or uploaded has its thumbprint: whether it chains to a verified CA cannot \
                 be told",
                group.id,
                named_text(named)
            ),
            "Give the doctor the CA certificate (in the chain file) to check it.",
        );
    };
    let pairs: Vec<(bool, Certificate)> = uploaded
        .iter()
        .map(|u| (u.verified, u.certificate.clone()))
        .collect();
    let name_of = |c: &Certificate| {
        uploaded
            .iter()
            .find(|u| u.certificate == *c)
            .map(|u| format!("'{}'", u.name))
            .unwrap_or_else(|| describe(c))
    };
    match enrollment::group_certificate_trust(certificate, sent, &pairs, now) {
        CaTrust::Verified => Check::ok(
            VERIFIED_ID,
            VERIFIED_TITLE,
            format!("{} is an uploaded, verified CA", name_of(certificate)),
        ),
        CaTrust::ChainsToVerified(anchor) => Check::ok(
            VERIFIED_ID,
            VERIFIED_TITLE,
            format!(
                "{} chains to the verified uploaded CA {}",
                describe(certificate),
                name_of(&anchor)
            ),
        ),
        CaTrust::UploadedUnverified => Check::problem(
            VERIFIED_ID,
            VERIFIED_TITLE,
            Cause::UnverifiedCa,
            format!(
                "group '{}' relies on {} {}, which is uploaded but not verified",
                group.id,
                name_of(certificate),
                describe(certificate)
            ),
            "Verify the CA certificate (proof of possession: dpskit or az iot dps certificate \
             generate-verification-code / verify), or upload it as verified.",
        ),
        CaTrust::Untrusted => {
            let unverified_above = uploaded.iter().find(|u| {
                !u.verified
                    && crate::pki::verify_chain(
                        certificate,
                        &pairs.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
                        std::slice::from_ref(&u.certificate),
                        now,
                    )
                    .is_ok()
            });
            let evidence = match unverified_above {
                Some(u) => format!(
                    "group '{}' names {}, which chains to '{}', uploaded but not verified",
                    group.id,
                    describe(certificate),
                    u.name
                ),
                None => format!(
                    "group '{}' names {}, which is not uploaded and chains to no verified \
                     uploaded CA",
                    group.id,
                    describe(certificate)
                ),
            };
            Check::problem(
                VERIFIED_ID,
                VERIFIED_TITLE,
                Cause::UnverifiedCa,
                evidence,
                "Upload the group's CA (or the root above it) to the DPS and verify it.",
            )
        }
    }
}

fn enabled_check(what: &str, policies: &EnrollmentPolicies) -> Check {
    if policies.provisioning_status == Some(ProvisioningStatus::Disabled) {
        Check::problem(
            ENABLED_ID,
            ENABLED_TITLE,
            Cause::DisabledEnrollment,
            format!("the {what} is disabled (provisioningStatus: disabled)"),
            "Enable the enrollment (provisioningStatus: enabled), unless the device is meant to \
             be blocked.",
        )
    } else {
        Check::ok(ENABLED_ID, ENABLED_TITLE, format!("the {what} is enabled"))
    }
}

fn hubs_check(picked: Option<&Picked>, dps: &DpsResource) -> Check {
    let Some(Picked { what, policies }) = picked else {
        return skipped(HUBS_ID, "no enrollment is picked");
    };
    let named: Vec<String> = match (&policies.iot_hubs, &policies.iot_hub_host_name) {
        (Some(hubs), _) if !hubs.is_empty() => hubs.clone(),
        (_, Some(host)) if !host.is_empty() => vec![host.clone()],
        _ => Vec::new(),
    };
    let linked: Vec<String> = dps
        .linked_hubs
        .iter()
        .map(|l| l.host_name.clone())
        .collect();
    let (candidates, scope) = if named.is_empty() {
        (
            dps.linked_hubs
                .iter()
                .filter(|l| l.apply_allocation_policy)
                .map(|l| l.host_name.clone())
                .collect::<Vec<_>>(),
            "names no hub: every linked hub the allocation policy applies to".to_string(),
        )
    } else {
        (
            named
                .iter()
                .filter(|h| linked.iter().any(|l| l.eq_ignore_ascii_case(h)))
                .cloned()
                .collect(),
            format!("names {}", named.join(", ")),
        )
    };
    let linked_text = if linked.is_empty() {
        "none".to_string()
    } else {
        linked.join(", ")
    };
    if candidates.is_empty() {
        Check::problem(
            HUBS_ID,
            HUBS_TITLE,
            Cause::NoLinkedHub,
            format!(
                "the {what} {scope}; hubs linked to {}: {linked_text}",
                dps.name
            ),
            "Link an IoT hub to the DPS (az iot dps linked-hub create) and let the enrollment \
             use it.",
        )
    } else {
        Check::ok(
            HUBS_ID,
            HUBS_TITLE,
            format!("the {what} {scope}: can assign {}", candidates.join(", ")),
        )
    }
}

fn record_check(record: &DeviceRegistrationState) -> Check {
    let status = record.status.as_deref().unwrap_or("unknown");
    let when = record
        .last_updated_date_time_utc
        .as_deref()
        .unwrap_or("an unknown time");
    match status {
        "assigned" => Check::ok(
            RECORD_ID,
            RECORD_TITLE,
            format!(
                "assigned to {} as '{}' at {when}",
                record.assigned_hub.as_deref().unwrap_or("?"),
                record.device_id.as_deref().unwrap_or("?")
            ),
        ),
        "failed" | "disabled" => Check::warning(
            RECORD_ID,
            RECORD_TITLE,
            None,
            format!(
                "{status} at {when}: {} {}",
                record
                    .error_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "no error code".into()),
                record.error_message.as_deref().unwrap_or("no message")
            ),
            "See the other checks for the cause; the record changes at the next registration.",
        ),
        other => Check::ok(RECORD_ID, RECORD_TITLE, format!("{other} at {when}")),
    }
}

/// The port the service APIs of this cloud answer on when it is not 443: the local cloud
/// serves every resource's service API on the port its DPS's names.
fn web_port(dps: &DpsResource) -> Option<&str> {
    dps.service_operations_host_name
        .rsplit_once(':')
        .map(|(_, port)| port)
        .filter(|p| p.parse::<u16>().is_ok())
}

async fn identity_check(
    target: &OnlineTarget,
    dps: &DpsResource,
    record: Option<&DeviceRegistrationState>,
    leaf: &Certificate,
) -> Check {
    let Some(record) = record.filter(|r| r.status.as_deref() == Some("assigned")) else {
        return skipped(IDENTITY_ID, "the device is not assigned to a hub");
    };
    let (Some(host), Some(device_id)) = (&record.assigned_hub, &record.device_id) else {
        return skipped(IDENTITY_ID, "the record names no hub or device id");
    };
    let hub = match target.arm.hubs().await {
        Ok(hubs) => hubs
            .into_iter()
            .find(|h| h.host_name.eq_ignore_ascii_case(host)),
        Err(e) => return skipped(IDENTITY_ID, &format!("the hubs could not be listed: {e}")),
    };
    let Some(hub) = hub else {
        return skipped(
            IDENTITY_ID,
            &format!("hub {host} is not in this resource group"),
        );
    };
    let keys = match target.arm.hub_keys(&hub.name).await {
        Ok(keys) => keys,
        Err(e) => {
            return skipped(
                IDENTITY_ID,
                &format!("the keys of hub {} could not be read: {e}", hub.name),
            );
        }
    };
    // A host that names its port already (a stand-in, a proxy) is dialled as named.
    let authority = match web_port(dps) {
        Some(port) if !host.contains(':') => format!("{host}:{port}"),
        _ => host.clone(),
    };
    let connection = format!(
        "HostName={authority};SharedAccessKeyName={};SharedAccessKey={}",
        keys.key_name, keys.primary_key
    );
    let client = match HubServiceClient::from_connection_string(&connection, None, &target.trust) {
        Ok(client) => client,
        Err(e) => {
            return skipped(
                IDENTITY_ID,
                &format!("the hub client could not be made: {e}"),
            );
        }
    };
    let identity: DeviceIdentity = match client.device(device_id).await {
        Ok(identity) => identity,
        Err(e) if is_not_found(&e) => {
            return Check::warning(
                IDENTITY_ID,
                IDENTITY_TITLE,
                None,
                format!("DPS assigned '{device_id}' to {host}, but the hub has no such identity"),
                "Register the device again: DPS creates the identity when it assigns it.",
            );
        }
        Err(e) => return skipped(IDENTITY_ID, &format!("the identity could not be read: {e}")),
    };
    if identity.status.as_deref() == Some("disabled") {
        return Check::problem(
            IDENTITY_ID,
            IDENTITY_TITLE,
            Cause::HubIdentityDisabled,
            format!(
                "'{device_id}' in {host} is disabled{}",
                identity
                    .status_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            "Enable the device identity in the hub (status: enabled).",
        );
    }
    let authentication = identity.authentication.unwrap_or_default();
    let kind = authentication.kind.as_deref().unwrap_or("sas");
    let info = leaf.info();
    let mismatch = |evidence: String| {
        Check::problem(
            IDENTITY_ID,
            IDENTITY_TITLE,
            Cause::HubIdentityMismatch,
            evidence,
            "Register the device again so DPS rewrites the identity with this certificate's \
             thumbprint (with reprovisioning allowed), or update the identity's thumbprints.",
        )
    };
    match kind {
        "selfSigned" => {
            let thumbprints = authentication.x509_thumbprint.unwrap_or_default();
            let listed: Vec<String> = [
                thumbprints.primary_thumbprint,
                thumbprints.secondary_thumbprint,
            ]
            .into_iter()
            .flatten()
            .collect();
            if listed.iter().any(|t| {
                t.eq_ignore_ascii_case(&info.thumbprint_sha1)
                    || t.eq_ignore_ascii_case(&info.thumbprint_sha256)
            }) {
                Check::ok(
                    IDENTITY_ID,
                    IDENTITY_TITLE,
                    format!(
                        "'{device_id}' in {host} is enabled and names this certificate's thumbprint"
                    ),
                )
            } else {
                mismatch(format!(
                    "'{device_id}' in {host} names thumbprint(s) {}, not {} (this certificate's)",
                    if listed.is_empty() {
                        "none".into()
                    } else {
                        listed.join(", ")
                    },
                    info.thumbprint_sha1
                ))
            }
        }
        "certificateAuthority" => Check::ok(
            IDENTITY_ID,
            IDENTITY_TITLE,
            format!("'{device_id}' in {host} is enabled and authenticates by its CA"),
        ),
        other => mismatch(format!(
            "'{device_id}' in {host} authenticates with '{other}', not this certificate"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

    fn ca(name: &str) -> CertificateAuthority {
        let options = CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(30, None).unwrap(),
            path_length: None,
            organization: None,
        };
        CertificateAuthority::create_root(name, &options).unwrap()
    }

    /// ARM answers a CA's body as base64 DER (the emulator, and Azure for a .cer) or as the
    /// PEM text uploaded; both read as the same certificate, and neither is taken silently
    /// when it does not parse.
    #[test]
    fn an_uploaded_ca_reads_from_base64_der_or_pem_text() {
        let root = ca("Online Root");
        let certificate = root.credential().certificate();
        assert_eq!(
            parse_certificate(&BASE64.encode(certificate.der())).unwrap(),
            *certificate
        );
        assert_eq!(parse_certificate(&certificate.pem()).unwrap(), *certificate);
        assert!(parse_certificate("MIIB").is_err());
        assert!(parse_certificate("not a certificate").is_err());
    }

    /// A group certificate Azure describes only by subject and thumbprints is taken as the
    /// issuer of a certificate naming it, unless a known certificate of the same name (so
    /// another one) is that issuer.
    #[test]
    fn a_described_certificate_issues_by_name_unless_a_look_alike_does() {
        let ours = ca("Shared Name");
        let theirs = ca("Shared Name");
        let device = ours
            .issue_device(
                "described",
                KeyAlgorithm::EcP256,
                Validity::days(5, None).unwrap(),
            )
            .unwrap();
        let leaf = device.credential().certificate().clone();
        let info = crate::protocol::dps_service::X509CertificateInfo {
            subject_name: theirs.credential().certificate().info().subject.clone(),
            sha1_thumbprint: theirs
                .credential()
                .certificate()
                .info()
                .thumbprint_sha1
                .clone(),
            ..Default::default()
        };
        let entry = X509CertificateWithInfo {
            certificate: None,
            info: Some(info),
        };
        let mut unreadable = Vec::new();
        let unknown = resolve_entry(&entry, "it".into(), &[], &mut unreadable).unwrap();
        assert!(unknown.certificate().is_none());
        assert!(unknown.issued(&leaf), "by name alone");
        let ours_known = [ours.credential().certificate().clone()];
        let told_apart = resolve_entry(&entry, "it".into(), &ours_known, &mut unreadable).unwrap();
        assert!(
            !told_apart.issued(&leaf),
            "our own CA of that name issued it"
        );
        let theirs_known = [theirs.credential().certificate().clone()];
        let resolved = resolve_entry(&entry, "it".into(), &theirs_known, &mut unreadable).unwrap();
        assert_eq!(resolved.certificate(), Some(&theirs_known[0]));
        assert!(!resolved.issued(&leaf));
        assert!(unreadable.is_empty());
    }

    /// Groups as Azure's service API answers them (recorded shape: an inline signing
    /// certificate as `info` only, a CA by reference), resolved and walked as DPS would: the
    /// inline group on the intermediate is met first, through the thumbprint of the
    /// intermediate the device holds; the one on the uploaded root is resolved by its body.
    #[test]
    fn azure_shaped_groups_resolve_by_thumbprint_and_by_reference_and_are_walked_in_order() {
        let options = |path_length| CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(30, None).unwrap(),
            path_length,
            organization: None,
        };
        let root = CertificateAuthority::create_root("Azure Shaped Root", &options(None)).unwrap();
        let inter = root
            .create_intermediate("Azure Shaped Intermediate", &options(Some(0)))
            .unwrap();
        let device = inter
            .issue_device(
                "azure-shaped",
                KeyAlgorithm::EcP256,
                Validity::days(5, None).unwrap(),
            )
            .unwrap();
        let inter_info = inter.credential().certificate().info();
        let recorded = serde_json::json!([
            {
                "enrollmentGroupId": "on-root",
                "attestation": {"type": "x509", "x509": {
                    "caReferences": {"primary": "uploaded-root", "secondary": "gone"}
                }},
                "provisioningStatus": "enabled",
                "allocationPolicy": "hashed",
                "iotHubs": ["myhub.azure-devices.net"],
                "etag": "\"AAAA\"",
                "createdDateTimeUtc": "2026-12-01T10:00:00.000Z",
                "lastUpdatedDateTimeUtc": "2026-12-01T10:00:00.000Z"
            },
            {
                "enrollmentGroupId": "on-intermediate",
                "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {
                    "info": {
                        "subjectName": inter_info.subject,
                        "sha1Thumbprint": inter_info.thumbprint_sha1.to_ascii_uppercase(),
                        "sha256Thumbprint": inter_info.thumbprint_sha256.to_ascii_uppercase(),
                        "issuerName": inter_info.issuer,
                        "notBeforeUtc": "2026-12-01T10:00:00Z",
                        "notAfterUtc": "2026-12-31T10:00:00Z",
                        "serialNumber": "01",
                        "version": 3
                    }
                }}}},
                "provisioningStatus": "disabled",
                "etag": "\"BBBB\""
            },
            {
                "enrollmentGroupId": "keys",
                "attestation": {"type": "symmetricKey", "symmetricKey": {}}
            }
        ]);
        let groups: Vec<EnrollmentGroup> = serde_json::from_value(recorded).unwrap();
        let uploaded = [Uploaded {
            name: "uploaded-root".into(),
            verified: true,
            certificate: parse_certificate(&root.credential().certificate().pem()).unwrap(),
        }];
        let held = vec![
            device.credential().certificate().clone(),
            inter.credential().certificate().clone(),
            root.credential().certificate().clone(),
        ];
        let sent = sent_chain(&held);
        assert_eq!(sent.len(), 2, "the root is not sent");
        let (groups, unreadable) = x509_groups(groups, &held, &uploaded);
        assert!(unreadable.is_empty());
        assert_eq!(
            groups.len(),
            2,
            "the symmetric-key group is not an X.509 candidate"
        );
        assert_eq!(groups[0].dangling, ["gone"]);
        assert_eq!(
            groups[1].certificates[0].certificate(),
            Some(inter.credential().certificate())
        );
        let sets: Vec<&[Named]> = groups.iter().map(|g| g.certificates.as_slice()).collect();
        let walk = enrollment::pick_group(&sent, &sets);
        assert_eq!(
            walk.pick,
            Some((1, 0)),
            "the intermediate is met before the root"
        );
        let listing = groups_listing(&groups, &unreadable);
        assert!(listing.contains("CA 'gone' (not uploaded)"), "{listing}");
        // Disabled as recorded, and the trust of the group's CA comes from the verified root.
        assert_eq!(
            enabled_check("enrollment group 'on-intermediate'", &groups[1].policies).cause,
            Some(Cause::DisabledEnrollment)
        );
        let verified = verified_check(
            &groups[1],
            &groups[1].certificates[0],
            &sent,
            &uploaded,
            crate::clock::now(),
        );
        assert_eq!(
            verified.verdict,
            crate::diagnosis::Verdict::Ok,
            "{verified:?}"
        );
        assert!(
            verified.evidence.contains("'uploaded-root'"),
            "{verified:?}"
        );
        // A leaf sent alone still meets the group on its intermediate: DPS matches a group
        // whose certificate issued the leaf.
        let walk = enrollment::pick_group(&sent[..1], &sets);
        assert_eq!(walk.pick, Some((1, 0)));
    }
}
