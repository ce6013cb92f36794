//! The offline checks of a device credential: what can be told from the certificates and key
//! the device holds, before any server is asked. Each classic cause comes out of exactly one
//! check, so a credential with one defect is diagnosed as that defect and nothing else: the
//! checks find the leaf (the certificate the key belongs to; without a key, the bottom of the
//! chain) and its issuers by name and signature, not by position, so a chain sent out of
//! order is `chain.order`'s problem alone.

use super::credential::HeldCredential;
use super::{Cause, Check};
use crate::pki::Certificate;
use crate::pki::chain::{describe, format_time};

/// Check ids, in the order the checks run.
pub const CHAIN_ORDER: &str = "chain.order";
/// See [`CHAIN_ORDER`].
pub const KEY_MATCH: &str = "key.match";
/// See [`CHAIN_ORDER`].
pub const REGISTRATION_ID_VALID: &str = "registration_id.valid";
/// See [`CHAIN_ORDER`].
pub const REGISTRATION_ID_MATCHES: &str = "registration_id.matches";
/// See [`CHAIN_ORDER`].
pub const VALIDITY_LEAF: &str = "validity.leaf";
/// See [`CHAIN_ORDER`].
pub const VALIDITY_CHAIN: &str = "validity.chain";
/// See [`CHAIN_ORDER`].
pub const LEAF_PROFILE: &str = "leaf.profile";
/// See [`CHAIN_ORDER`].
pub const ALGORITHMS: &str = "algorithms";
/// See [`CHAIN_ORDER`].
pub const CHAIN_CA_CONSTRAINTS: &str = "chain.ca_constraints";
/// See [`CHAIN_ORDER`].
pub const CHAIN_COMPLETE: &str = "chain.complete";

const DAY: i64 = 86_400;

/// What the offline checks are told besides the credential.
#[derive(Clone, Copy, Debug)]
pub struct OfflineOptions<'a> {
    /// The registration id the device uses, when the user gave one.
    pub registration_id: Option<&'a str>,
    /// Unix seconds to judge validity at.
    pub now: i64,
    /// A certificate expiring within this many days is a warning.
    pub expiry_warning_days: i64,
}

/// Every offline check of `credential`, in a fixed order (the ids above). Nothing when the
/// credential holds no certificate: the caller reports that as `files.parse`.
pub fn check(credential: &HeldCredential, options: &OfflineOptions<'_>) -> Vec<Check> {
    let Some(held) = Held::new(credential) else {
        return Vec::new();
    };
    vec![
        chain_order(&held),
        key_match(&held),
        registration_id_valid(&held),
        registration_id_matches(&held, options.registration_id),
        validity_leaf(&held, options),
        validity_chain(&held, options),
        leaf_profile(&held),
        algorithms(&held),
        ca_constraints(&held),
        chain_complete(&held),
    ]
}

/// The credential with its structure worked out once.
struct Held<'a> {
    credential: &'a HeldCredential,
    certs: &'a [Certificate],
    /// Where the leaf is: the certificate the key belongs to; the first when the key belongs
    /// to none; without a key, see `bottom`.
    leaf: usize,
    /// Where the key belongs, when a key was given and it belongs to one.
    key_at: Option<usize>,
    /// Whether each certificate repeats an earlier one.
    duplicate: Vec<bool>,
    /// The leaf, then its issuers found among the held certificates (name and signature),
    /// nearest first.
    path: Vec<usize>,
}

impl<'a> Held<'a> {
    fn new(credential: &'a HeldCredential) -> Option<Self> {
        let certs = credential.certificates.as_slice();
        if certs.is_empty() {
            return None;
        }
        let key_at = credential.key.as_ref().and_then(|key| {
            certs
                .iter()
                .position(|c| crate::pki::issue::key_matches(c, key))
        });
        let duplicate: Vec<bool> = (0..certs.len())
            .map(|i| certs[..i].contains(&certs[i]))
            .collect();
        let leaf = match (&credential.key, key_at) {
            (_, Some(i)) => i,
            (None, None) => bottom(certs, &duplicate),
            (Some(_), None) => 0,
        };
        let mut path = vec![leaf];
        let mut current = leaf;
        while let Some(next) = issuer_among(certs, &duplicate, current, &path) {
            path.push(next);
            current = next;
        }
        Some(Held {
            credential,
            certs,
            leaf,
            key_at,
            duplicate,
            path,
        })
    }

    fn leaf(&self) -> &Certificate {
        &self.certs[self.leaf]
    }

    /// Each distinct certificate once, in the order held.
    fn distinct(&self) -> impl Iterator<Item = (usize, &Certificate)> {
        self.certs
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.duplicate[*i])
    }
}

/// Without a key, the leaf is the first certificate unless that one issued another held
/// certificate: then it is the first that issued none (the bottom of the chain), so a chain
/// held upside down is one `chain.order` problem rather than a CA taken for the leaf.
fn bottom(certs: &[Certificate], duplicate: &[bool]) -> usize {
    let issues_another = |i: usize| {
        (0..certs.len()).any(|j| j != i && certs[j] != certs[i] && issued(&certs[i], &certs[j]))
    };
    if !issues_another(0) {
        return 0;
    }
    (1..certs.len())
        .find(|i| !duplicate[*i] && !issues_another(*i))
        .unwrap_or(0)
}

/// The certificate among `certs` that issued `certs[child]` (issuer name and signature),
/// preferring the one right after it, skipping those already on `path`.
fn issuer_among(
    certs: &[Certificate],
    duplicate: &[bool],
    child: usize,
    path: &[usize],
) -> Option<usize> {
    let child_cert = &certs[child];
    if child_cert.info().is_self_signed {
        return None;
    }
    let candidates = (child + 1..certs.len()).chain(0..child);
    candidates
        .filter(|j| !duplicate[*j] && !path.contains(j) && certs[*j] != *child_cert)
        .find(|j| issued(&certs[*j], child_cert))
}

fn issued(issuer: &Certificate, child: &Certificate) -> bool {
    issuer.is_issuer_name_of(child) && child.is_signed_by(issuer)
}

fn position(i: usize) -> String {
    format!("#{}", i + 1)
}

fn names(held: &Held<'_>, indices: &[usize]) -> String {
    indices
        .iter()
        .map(|i| describe(&held.certs[*i]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn chain_order(held: &Held<'_>) -> Check {
    const TITLE: &str = "Leaf first, each certificate issued by the next";
    let mut findings = Vec::new();
    if held.leaf != 0 {
        let why = if held.key_at.is_some() {
            "the key belongs to"
        } else {
            "the leaf (it issued none of the others) is"
        };
        findings.push(format!(
            "{why} {} {}, not the first certificate {}: the device presents the first one as \
             its own",
            position(held.leaf),
            describe(held.leaf()),
            describe(&held.certs[0])
        ));
    }
    let top = held.path[held.path.len() - 1];
    let gap = (!held.certs[top].info().is_self_signed).then(|| {
        format!(
            " (the issuer of {}, '{}', is not held: is it missing?)",
            describe(&held.certs[top]),
            held.certs[top].info().issuer
        )
    });
    let mut strangers = 0;
    // Certificates off the path that issued one on it: renewed or cross-signed copies of a
    // CA the path already holds; harmless, but only one of them is needed.
    let mut alternates = Vec::new();
    for (i, cert) in held.distinct().filter(|(i, _)| !held.path.contains(i)) {
        if let Some(p) = held.path.iter().find(|p| issued(cert, &held.certs[**p])) {
            alternates.push(format!(
                "{} {} issued {} too (a renewed or cross-signed copy of a CA already in the \
                 chain)",
                position(i),
                describe(cert),
                describe(&held.certs[*p])
            ));
            continue;
        }
        strangers += 1;
        let namesake = held
            .path
            .iter()
            .find(|p| cert.is_issuer_name_of(&held.certs[**p]));
        findings.push(match namesake {
            Some(p) => format!(
                "{} {} bears the issuer name of {} but its key did not sign it (a different CA \
                 with the same name)",
                position(i),
                describe(cert),
                describe(&held.certs[*p])
            ),
            None => format!(
                "{} {} is not in the chain of {}: it issued none of its certificates{}",
                position(i),
                describe(cert),
                describe(held.leaf()),
                gap.as_deref().unwrap_or("")
            ),
        });
    }
    let sent: Vec<usize> = held
        .distinct()
        .map(|(i, _)| i)
        .filter(|i| held.path.contains(i))
        .collect();
    if sent != held.path {
        findings.push(format!(
            "sent as {}; leaf first, each issued by the next, is {}",
            names(held, &sent),
            names(held, &held.path)
        ));
    }
    if !findings.is_empty() {
        let fix = if strangers > 0 {
            "Send the leaf first, each certificate followed by the one that issued it, and drop \
             the certificates that do not belong to its chain."
        } else {
            "Send the leaf first, each certificate followed by the one that issued it (e.g. cat \
             device.pem intermediate.pem root.pem > chain.pem)."
        };
        return Check::problem(
            CHAIN_ORDER,
            TITLE,
            Cause::ChainOrder,
            findings.join("; "),
            fix,
        );
    }
    let chain = held
        .path
        .iter()
        .map(|i| describe(&held.certs[*i]))
        .collect::<Vec<_>>()
        .join(", issued by ");
    let repeated: Vec<String> = held
        .certs
        .iter()
        .enumerate()
        .filter(|(i, _)| held.duplicate[*i])
        .map(|(i, c)| format!("{} {}", position(i), describe(c)))
        .collect();
    let mut extras = alternates;
    if !repeated.is_empty() {
        extras.push(format!(
            "{} repeat(s) an earlier certificate",
            repeated.join(", ")
        ));
    }
    if extras.is_empty() {
        Check::ok(CHAIN_ORDER, TITLE, format!("in order: {chain}"))
    } else {
        Check::warning(
            CHAIN_ORDER,
            TITLE,
            Some(Cause::ChainOrder),
            format!("in order: {chain}; but {}", extras.join("; ")),
            "Send each certificate of the chain once: some TLS stacks refuse a chain with \
             duplicates or extra certificates.",
        )
    }
}

fn key_match(held: &Held<'_>) -> Check {
    const TITLE: &str = "The key belongs to the leaf";
    let Some(key) = &held.credential.key else {
        return Check::skipped(KEY_MATCH, TITLE, "no key given");
    };
    match held.key_at {
        Some(0) => Check::ok(
            KEY_MATCH,
            TITLE,
            format!(
                "the {} key belongs to {} (SHA-1 {})",
                key.algorithm(),
                describe(held.leaf()),
                held.leaf().info().thumbprint_sha1
            ),
        ),
        Some(i) => Check::skipped(
            KEY_MATCH,
            TITLE,
            format!(
                "see chain.order: the key belongs to {} {}",
                position(i),
                describe(&held.certs[i])
            ),
        ),
        None => Check::problem(
            KEY_MATCH,
            TITLE,
            Cause::KeyMismatch,
            format!(
                "the {} key belongs to none of the {} certificate(s); the first, {} (SHA-1 {}), \
                 holds a {} key",
                key.algorithm(),
                held.certs.len(),
                describe(held.leaf()),
                held.leaf().info().thumbprint_sha1,
                held.leaf().info().key_algorithm
            ),
            "Give the key generated with this certificate (or the certificate issued for this \
             key).",
        ),
    }
}

fn registration_id_valid(held: &Held<'_>) -> Check {
    const TITLE: &str = "The leaf's CN is a valid registration id";
    let info = held.leaf().info();
    let fix = "Issue the device certificate with CN = its registration id: 1 to 64 characters \
               from A-Z a-z 0-9 - . _ :, ending in a letter, a digit or -.";
    match &info.common_name {
        None => Check::problem(
            REGISTRATION_ID_VALID,
            TITLE,
            Cause::InvalidRegistrationId,
            format!(
                "the certificate has no CN (subject '{}'): it must equal the registration id",
                info.subject
            ),
            fix,
        ),
        Some(cn) => match crate::pki::validate_registration_id(cn, true) {
            Ok(()) => Check::ok(
                REGISTRATION_ID_VALID,
                TITLE,
                format!("CN '{cn}' is a valid registration id"),
            ),
            Err(e) => Check::problem(
                REGISTRATION_ID_VALID,
                TITLE,
                Cause::InvalidRegistrationId,
                format!("the leaf's CN: {e}"),
                fix,
            ),
        },
    }
}

fn registration_id_matches(held: &Held<'_>, registration_id: Option<&str>) -> Check {
    const TITLE: &str = "The leaf's CN is the registration id";
    let Some(id) = registration_id else {
        return Check::skipped(
            REGISTRATION_ID_MATCHES,
            TITLE,
            "no registration id given: the device uses the leaf's CN",
        );
    };
    let Some(cn) = held.leaf().info().common_name.as_deref() else {
        return Check::skipped(
            REGISTRATION_ID_MATCHES,
            TITLE,
            "see registration_id.valid: the leaf has no CN",
        );
    };
    if cn == id {
        Check::ok(
            REGISTRATION_ID_MATCHES,
            TITLE,
            format!("CN '{cn}' is the registration id"),
        )
    } else if cn.eq_ignore_ascii_case(id) {
        Check::warning(
            REGISTRATION_ID_MATCHES,
            TITLE,
            Some(Cause::CnMismatch),
            format!(
                "the certificate's CN is '{cn}' and the registration id '{id}': equal only when \
                 case is ignored, as DPS compares them; the hub device id is the CN's spelling"
            ),
            format!("Register as '{cn}', the CN's exact spelling."),
        )
    } else {
        Check::problem(
            REGISTRATION_ID_MATCHES,
            TITLE,
            Cause::CnMismatch,
            format!(
                "the certificate's CN is '{cn}' but the registration id is '{id}': they must be \
                 equal"
            ),
            format!("Register as '{cn}', or issue the device a certificate with CN = '{id}'."),
        )
    }
}

/// How one certificate stands at `now`.
enum Standing {
    Valid,
    ExpiresSoon(i64),
    Expired,
    NotYetValid,
}

fn standing(cert: &Certificate, options: &OfflineOptions<'_>) -> Standing {
    let info = cert.info();
    if options.now < info.not_before {
        Standing::NotYetValid
    } else if options.now > info.not_after {
        Standing::Expired
    } else if info.not_after - options.now <= options.expiry_warning_days * DAY {
        Standing::ExpiresSoon((info.not_after - options.now) / DAY)
    } else {
        Standing::Valid
    }
}

fn period(cert: &Certificate) -> String {
    let info = cert.info();
    format!(
        "valid from {} to {}",
        format_time(info.not_before),
        format_time(info.not_after)
    )
}

fn validity_leaf(held: &Held<'_>, options: &OfflineOptions<'_>) -> Check {
    const TITLE: &str = "The leaf is within its validity period";
    let leaf = held.leaf();
    let at = format_time(options.now);
    let evidence = format!("{} is {} (now {at})", describe(leaf), period(leaf));
    match standing(leaf, options) {
        Standing::Valid => Check::ok(VALIDITY_LEAF, TITLE, evidence),
        Standing::ExpiresSoon(days) => Check::warning(
            VALIDITY_LEAF,
            TITLE,
            Some(Cause::ExpiredLeaf),
            format!("{evidence}: it expires in {days} day(s)"),
            "Renew the device certificate before it expires (and re-provision with the new one).",
        ),
        Standing::Expired => Check::problem(
            VALIDITY_LEAF,
            TITLE,
            Cause::ExpiredLeaf,
            format!("the device certificate has expired: {evidence}"),
            "Issue the device a new certificate and provision with it.",
        ),
        Standing::NotYetValid => Check::problem(
            VALIDITY_LEAF,
            TITLE,
            Cause::NotYetValid,
            format!("the device certificate is not valid yet (or the clock is behind): {evidence}"),
            "Check the device's clock; if it is right, issue a certificate valid from now.",
        ),
    }
}

fn validity_chain(held: &Held<'_>, options: &OfflineOptions<'_>) -> Check {
    const TITLE: &str = "The other certificates are within their validity periods";
    let others: Vec<(usize, &Certificate)> =
        held.distinct().filter(|(i, _)| *i != held.leaf).collect();
    if others.is_empty() {
        return Check::skipped(
            VALIDITY_CHAIN,
            TITLE,
            "the device holds no certificate besides the leaf",
        );
    }
    let (mut expired, mut early, mut soon, mut fine) = (vec![], vec![], vec![], vec![]);
    for (i, cert) in others {
        let line = format!("{} {} is {}", position(i), describe(cert), period(cert));
        match standing(cert, options) {
            Standing::Valid => fine.push(line),
            Standing::ExpiresSoon(days) => soon.push(format!("{line}: expires in {days} day(s)")),
            Standing::Expired => expired.push(format!("{line}: expired")),
            Standing::NotYetValid => early.push(format!("{line}: not valid yet")),
        }
    }
    let at = format_time(options.now);
    let all = [&expired, &early, &soon, &fine]
        .into_iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    let evidence = format!("{all} (now {at})");
    if !expired.is_empty() {
        Check::problem(
            VALIDITY_CHAIN,
            TITLE,
            Cause::ExpiredIntermediate,
            evidence,
            "Renew the expired CA certificate (same key and name), upload it to DPS again, and \
             give the device the new one in its chain.",
        )
    } else if !early.is_empty() {
        Check::problem(
            VALIDITY_CHAIN,
            TITLE,
            Cause::NotYetValid,
            evidence,
            "Check the clock of the machine that issued the CA certificate and of the device.",
        )
    } else if !soon.is_empty() {
        Check::warning(
            VALIDITY_CHAIN,
            TITLE,
            Some(Cause::ExpiredIntermediate),
            evidence,
            "Renew the CA certificate before it expires: every device it vouches for stops \
             provisioning then.",
        )
    } else {
        Check::ok(VALIDITY_CHAIN, TITLE, evidence)
    }
}

fn leaf_profile(held: &Held<'_>) -> Check {
    const TITLE: &str = "The leaf is fit for client authentication";
    let leaf = held.leaf();
    let info = leaf.info();
    let mut findings = Vec::new();
    if info.is_ca {
        findings.push("it is a CA certificate (basicConstraints CA:TRUE)".to_string());
    }
    let has = |list: &[String], name: &str| list.iter().any(|u| u == name);
    if !info.key_usage.is_empty() && !has(&info.key_usage, "digitalSignature") {
        findings.push(format!(
            "its keyUsage ({}) lacks digitalSignature",
            info.key_usage.join(", ")
        ));
    }
    if !info.extended_key_usage.is_empty()
        && !has(&info.extended_key_usage, "clientAuth")
        && !has(&info.extended_key_usage, "anyExtendedKeyUsage")
    {
        findings.push(format!(
            "its extendedKeyUsage ({}) lacks clientAuth",
            info.extended_key_usage.join(", ")
        ));
    }
    if !findings.is_empty() {
        return Check::problem(
            LEAF_PROFILE,
            TITLE,
            Cause::UnfitLeaf,
            format!("{}: {}", describe(leaf), findings.join("; ")),
            "Issue the device certificate with the device profile: CA:FALSE, keyUsage \
             digitalSignature, extendedKeyUsage clientAuth.",
        );
    }
    let listed = |list: &[String]| {
        if list.is_empty() {
            "absent".to_string()
        } else {
            list.join(", ")
        }
    };
    Check::ok(
        LEAF_PROFILE,
        TITLE,
        format!(
            "{}: CA:FALSE, keyUsage {}, extendedKeyUsage {}",
            describe(leaf),
            listed(&info.key_usage),
            listed(&info.extended_key_usage)
        ),
    )
}

/// Why Azure would refuse a key, if it would.
fn key_refusal(algorithm: &str) -> Option<String> {
    if let Some(bits) = algorithm.strip_prefix("rsa-") {
        return match bits.parse::<u32>() {
            Ok(bits) if bits >= 2048 => None,
            Ok(_) => Some(format!("an {algorithm} key (below 2048 bits)")),
            Err(_) => Some(format!("an RSA key of unknown size ({algorithm})")),
        };
    }
    match algorithm {
        "ec-p256" | "ec-p384" | "ec-p521" => None,
        "ed25519" => Some("an Ed25519 key".into()),
        other if other.starts_with("ec") => Some(format!("an EC key on curve {other}")),
        other => Some(format!("a key of algorithm {other}")),
    }
}

/// Whether Azure would refuse a signature algorithm: `Some(true)` refused, `Some(false)` not
/// known to be taken, `None` fine.
fn signature_refusal(algorithm: &str) -> Option<bool> {
    match algorithm {
        "ecdsa-with-SHA256"
        | "ecdsa-with-SHA384"
        | "ecdsa-with-SHA512"
        | "sha256WithRSAEncryption"
        | "sha384WithRSAEncryption"
        | "sha512WithRSAEncryption" => None,
        // SHA-1 and MD5 (RSA, ECDSA, DSA), MD2, Ed25519/Ed448.
        "sha1WithRSAEncryption"
        | "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.2"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3"
        | "ed25519"
        | "1.3.101.113" => Some(true),
        _ => Some(false),
    }
}

fn algorithms(held: &Held<'_>) -> Check {
    const TITLE: &str = "Key and signature algorithms Azure accepts";
    let (mut refused, mut unknown) = (Vec::new(), Vec::new());
    for (i, cert) in held.distinct() {
        let info = cert.info();
        if let Some(why) = key_refusal(&info.key_algorithm) {
            refused.push(format!("{} {} has {why}", position(i), describe(cert)));
        }
        // A root's signature on itself is never checked by a verifier: only the key counts.
        if info.is_self_signed {
            continue;
        }
        match signature_refusal(&info.signature_algorithm) {
            Some(true) => refused.push(format!(
                "{} {} is signed with {}",
                position(i),
                describe(cert),
                info.signature_algorithm
            )),
            Some(false) => unknown.push(format!(
                "{} {} is signed with {}",
                position(i),
                describe(cert),
                info.signature_algorithm
            )),
            None => {}
        }
    }
    const TAKEN: &str = "Azure takes RSA keys of 2048 bits or more and ECDSA on P-256, P-384 or \
                         P-521, signed with SHA-256, SHA-384 or SHA-512";
    let fix = "Reissue those certificates with an accepted algorithm (e.g. ECDSA P-256 with \
               SHA-256, dpskit's default).";
    if !refused.is_empty() {
        refused.extend(unknown);
        Check::problem(
            ALGORITHMS,
            TITLE,
            Cause::UnsupportedAlgorithm,
            format!("{}: {TAKEN}", refused.join("; ")),
            fix,
        )
    } else if !unknown.is_empty() {
        Check::warning(
            ALGORITHMS,
            TITLE,
            Some(Cause::UnsupportedAlgorithm),
            format!(
                "{}: {TAKEN}; this one is not known to work",
                unknown.join("; ")
            ),
            fix,
        )
    } else {
        let used: Vec<String> = held
            .distinct()
            .map(|(_, c)| {
                format!(
                    "{} {} ({})",
                    describe(c),
                    c.info().key_algorithm,
                    c.info().signature_algorithm
                )
            })
            .collect();
        Check::ok(ALGORITHMS, TITLE, used.join(", "))
    }
}

fn ca_constraints(held: &Held<'_>) -> Check {
    const TITLE: &str = "Every issuer may issue what is below it";
    if held.path.len() < 2 {
        return Check::ok(
            CHAIN_CA_CONSTRAINTS,
            TITLE,
            format!(
                "no issuer of {} is held: DPS checks the CAs it holds",
                describe(held.leaf())
            ),
        );
    }
    let mut findings = Vec::new();
    let mut seen = Vec::new();
    for (depth, index) in held.path.iter().enumerate().skip(1) {
        let issuer = &held.certs[*index];
        let info = issuer.info();
        let below = &held.certs[held.path[depth - 1]];
        // The CAs between this issuer and the leaf, the leaf itself not counted.
        let cas_below = depth - 1;
        if !info.is_ca {
            findings.push(format!(
                "{} issued {} but is not a CA (basicConstraints CA:TRUE missing)",
                describe(issuer),
                describe(below)
            ));
        }
        if !info.key_usage.is_empty() && !info.key_usage.iter().any(|u| u == "keyCertSign") {
            findings.push(format!(
                "{} issued {} but its keyUsage ({}) lacks keyCertSign",
                describe(issuer),
                describe(below),
                info.key_usage.join(", ")
            ));
        }
        match info.path_length {
            Some(limit) if cas_below > limit as usize => findings.push(format!(
                "{} allows {limit} CA certificate(s) below it (pathLenConstraint), the chain \
                 has {cas_below}",
                describe(issuer)
            )),
            Some(limit) => seen.push(format!("{} (pathLen {limit})", describe(issuer))),
            None => seen.push(describe(issuer)),
        }
    }
    if findings.is_empty() {
        Check::ok(
            CHAIN_CA_CONSTRAINTS,
            TITLE,
            format!(
                "CAs with keyCertSign, path lengths respected: {}",
                seen.join(", ")
            ),
        )
    } else {
        Check::problem(
            CHAIN_CA_CONSTRAINTS,
            TITLE,
            Cause::PathLength,
            findings.join("; "),
            "Issue the chain again from a CA whose basicConstraints (CA:TRUE, pathLenConstraint \
             large enough) and keyUsage (keyCertSign) allow the CAs below it.",
        )
    }
}

fn chain_complete(held: &Held<'_>) -> Check {
    const TITLE: &str = "The chain reaches the enrollment's CA";
    let leaf = held.leaf();
    let top = &held.certs[held.path[held.path.len() - 1]];
    if held.path.len() == 1 {
        if leaf.info().is_self_signed {
            return Check::ok(
                CHAIN_COMPLETE,
                TITLE,
                format!(
                    "{} is self-signed: only an individual enrollment holding it accepts it",
                    describe(leaf)
                ),
            );
        }
        let alone = held.distinct().count() == 1;
        let issuer = &leaf.info().issuer;
        let evidence = if alone {
            format!(
                "no chain is sent: the device sends only its own certificate (issued by \
                 '{issuer}'); DPS accepts it only if the enrollment's CA signed it directly"
            )
        } else {
            format!(
                "no certificate the device sends issued its own (issued by '{issuer}'): DPS \
                 accepts it only if the enrollment's CA signed it directly"
            )
        };
        let (cause, fix) = if held.credential.source.is_pkcs12() {
            (
                Cause::Pkcs12WithoutChain,
                format!(
                    "Unless the enrollment names '{issuer}' itself, export the PKCS#12 again \
                     with its intermediates (openssl pkcs12 -export ... -certfile \
                     intermediates.pem)."
                ),
            )
        } else {
            (
                Cause::MissingIntermediate,
                format!(
                    "Unless the enrollment names '{issuer}' itself, send the intermediates \
                     too: a full-chain PEM, leaf first."
                ),
            )
        };
        return Check::warning(CHAIN_COMPLETE, TITLE, Some(cause), evidence, fix);
    }
    let evidence = if top.info().is_self_signed {
        format!(
            "the chain reaches the root {} through {} certificate(s)",
            describe(top),
            held.path.len()
        )
    } else {
        format!(
            "the chain ends at {}, issued by '{}' (not sent): fine when the enrollment names \
             one of the certificates sent or that issuer",
            describe(top),
            top.info().issuer
        )
    };
    Check::ok(CHAIN_COMPLETE, TITLE, evidence)
}

#[cfg(test)]
mod tests;
