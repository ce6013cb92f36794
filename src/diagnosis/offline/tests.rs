//! Each classic cause built into a real credential (dpskit's CA, or rcgen directly for the
//! profiles dpskit refuses to issue) and diagnosed as that cause and no other.

use super::*;
use crate::diagnosis::credential::{self, CredentialSource};
use crate::diagnosis::{Verdict, causes};
use crate::pki::{
    CaOptions, CertificateAuthority, Credential, DeviceCredential, KeyAlgorithm, PrivateKey,
    Validity,
};

const WARN_DAYS: i64 = 30;

fn now() -> i64 {
    crate::clock::now()
}

fn days(n: i64) -> Validity {
    Validity::days(n, None).unwrap()
}

/// `n` days long, starting `offset_days` from now.
fn shifted(n: i64, offset_days: i64) -> Validity {
    Validity::days(n, Some(now() + offset_days * DAY)).unwrap()
}

fn ca_options(path_length: Option<u8>, validity: Validity) -> CaOptions {
    CaOptions {
        algorithm: KeyAlgorithm::EcP256,
        validity,
        path_length,
        organization: None,
    }
}

/// A root and an issuing intermediate under it, valid for a year.
fn hierarchy() -> (CertificateAuthority, CertificateAuthority) {
    let root =
        CertificateAuthority::create_root("Doctor Root", &ca_options(None, days(365))).unwrap();
    let inter = root
        .create_intermediate("Doctor Inter", &ca_options(Some(0), days(365)))
        .unwrap();
    (root, inter)
}

fn cert_of(ca: &CertificateAuthority) -> Certificate {
    ca.credential().certificate().clone()
}

fn key_of(credential: &Credential) -> PrivateKey {
    credential.key().try_clone().unwrap()
}

fn held(certificates: Vec<Certificate>, key: Option<PrivateKey>) -> HeldCredential {
    HeldCredential {
        source: CredentialSource::InMemory,
        certificates,
        key,
    }
}

/// The device as dpskit issued it: leaf, its issuers up to the root, and its key.
fn full(device: &DeviceCredential) -> HeldCredential {
    let credential = device.credential();
    let mut certificates = vec![credential.certificate().clone()];
    certificates.extend(credential.issuers().iter().cloned());
    held(certificates, Some(key_of(credential)))
}

fn run(credential: &HeldCredential, registration_id: Option<&str>) -> Vec<Check> {
    check(
        credential,
        &OfflineOptions {
            registration_id,
            now: now(),
            expiry_warning_days: WARN_DAYS,
        },
    )
}

fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

/// The report names exactly `cause`, from the check `id`.
#[track_caller]
fn only(checks: &[Check], id: &str, cause: Cause) {
    assert_eq!(causes(checks), vec![cause], "{checks:#?}");
    let problems: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Problem)
        .map(|c| c.id)
        .collect();
    assert_eq!(problems, [id], "{checks:#?}");
    let found = find(checks, id);
    assert!(found.fix.as_deref().is_some_and(|f| !f.is_empty()));
    assert!(!found.evidence.is_empty());
}

#[track_caller]
fn healthy(checks: &[Check]) {
    let failing: Vec<&Check> = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Problem | Verdict::Warning))
        .collect();
    assert!(failing.is_empty(), "{failing:#?}");
}

/// A leaf with the device profile signed by `ca`, built with rcgen so a test can give it what
/// dpskit would refuse to issue (`edit`), for the public key `key`.
fn custom_leaf(
    ca: &CertificateAuthority,
    cn: Option<&str>,
    key: &impl rcgen::PublicKeyData,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> Certificate {
    use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    match cn {
        Some(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        None => params
            .distinguished_name
            .push(DnType::OrganizationName, "No Common Name Ltd"),
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now() - 300).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now() + 365 * DAY).unwrap();
    edit(&mut params);
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &ca.credential().certificate().der().into(),
        ca.credential().key().key_pair(),
    )
    .unwrap();
    let cert = params.signed_by(key, &issuer).unwrap();
    Certificate::from_der(cert.der()).unwrap()
}

/// `custom_leaf` with a fresh P-256 key, under `inter`, held with its chain and key.
fn custom_device(
    root: &CertificateAuthority,
    inter: &CertificateAuthority,
    cn: Option<&str>,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> HeldCredential {
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let leaf = custom_leaf(inter, cn, key.key_pair(), edit);
    held(vec![leaf, cert_of(inter), cert_of(root)], Some(key))
}

#[test]
fn a_healthy_device_has_no_problem_and_no_warning() {
    let (_root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let checks = run(&full(&device), Some("dev-1"));
    let ids: Vec<&str> = checks.iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        [
            CHAIN_ORDER,
            KEY_MATCH,
            REGISTRATION_ID_VALID,
            REGISTRATION_ID_MATCHES,
            VALIDITY_LEAF,
            VALIDITY_CHAIN,
            LEAF_PROFILE,
            ALGORITHMS,
            CHAIN_CA_CONSTRAINTS,
            CHAIN_COMPLETE,
        ]
    );
    healthy(&checks);
    assert!(
        checks.iter().all(|c| c.verdict == Verdict::Ok),
        "{checks:#?}"
    );
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .contains("'dev-1', issued by 'Doctor Inter', issued by 'Doctor Root'")
    );
    assert!(
        find(&checks, CHAIN_COMPLETE)
            .evidence
            .contains("root 'Doctor Root'")
    );
    // The thumbprint is evidence; the key never is.
    let key_pem = device.credential().private_key_pem();
    let body = key_pem.lines().nth(1).unwrap();
    for c in &checks {
        assert!(!c.evidence.contains(body));
    }
    assert!(
        find(&checks, KEY_MATCH)
            .evidence
            .contains(&device.credential().certificate().info().thumbprint_sha1)
    );
    // Without the root, and without a key or an id: still healthy; the chain ends at the
    // intermediate, named with its issuer.
    let without_root = held(
        vec![device.credential().certificate().clone(), cert_of(&inter)],
        None,
    );
    let checks = run(&without_root, None);
    healthy(&checks);
    assert_eq!(find(&checks, KEY_MATCH).verdict, Verdict::Skipped);
    assert_eq!(
        find(&checks, REGISTRATION_ID_MATCHES).verdict,
        Verdict::Skipped
    );
    let complete = &find(&checks, CHAIN_COMPLETE).evidence;
    assert!(
        complete.contains("ends at 'Doctor Inter', issued by 'CN=Doctor Root'"),
        "{complete}"
    );
}

#[test]
fn a_self_signed_device_is_healthy() {
    use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "solo-1");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now() - 300).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now() + 365 * DAY).unwrap();
    let cert = params.self_signed(key.key_pair()).unwrap();
    let cert = Certificate::from_der(cert.der()).unwrap();
    let checks = run(&held(vec![cert], Some(key)), Some("solo-1"));
    healthy(&checks);
    assert!(
        find(&checks, CHAIN_COMPLETE)
            .evidence
            .contains("self-signed")
    );
    assert_eq!(find(&checks, VALIDITY_CHAIN).verdict, Verdict::Skipped);
}

#[test]
fn an_expired_leaf_and_one_expiring_soon() {
    let (_root, inter) = hierarchy();
    let old = inter
        .issue_device("dev-old", KeyAlgorithm::EcP256, shifted(1, -10))
        .unwrap();
    let checks = run(&full(&old), Some("dev-old"));
    only(&checks, VALIDITY_LEAF, Cause::ExpiredLeaf);
    assert!(
        find(&checks, VALIDITY_LEAF)
            .evidence
            .contains("has expired")
    );
    let soon = inter
        .issue_device(
            "dev-soon",
            KeyAlgorithm::EcP256,
            Validity::days(10, Some(now() - DAY / 2)).unwrap(),
        )
        .unwrap();
    let checks = run(&full(&soon), Some("dev-soon"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    let leaf = find(&checks, VALIDITY_LEAF);
    assert_eq!(leaf.verdict, Verdict::Warning);
    assert_eq!(leaf.cause, Some(Cause::ExpiredLeaf));
    assert!(
        leaf.evidence.contains("expires in 9 day(s)"),
        "{}",
        leaf.evidence
    );
}

#[test]
fn a_leaf_not_valid_yet() {
    let (_root, inter) = hierarchy();
    let early = inter
        .issue_device("dev-early", KeyAlgorithm::EcP256, shifted(30, 5))
        .unwrap();
    only(&run(&full(&early), None), VALIDITY_LEAF, Cause::NotYetValid);
}

#[test]
fn an_expired_intermediate_and_one_not_valid_yet() {
    let root =
        CertificateAuthority::create_root("Doctor Root", &ca_options(None, days(365))).unwrap();
    let old = root
        .create_intermediate("Old Inter", &ca_options(Some(0), shifted(1, -10)))
        .unwrap();
    let device = old
        .issue_device("dev-2", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let checks = run(&full(&device), Some("dev-2"));
    only(&checks, VALIDITY_CHAIN, Cause::ExpiredIntermediate);
    assert!(
        find(&checks, VALIDITY_CHAIN)
            .evidence
            .contains("'Old Inter'")
    );
    let early = root
        .create_intermediate("Early Inter", &ca_options(Some(0), shifted(30, 3)))
        .unwrap();
    let device = early
        .issue_device("dev-3", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    only(
        &run(&full(&device), None),
        VALIDITY_CHAIN,
        Cause::NotYetValid,
    );
    // Expiring soon: a warning, no cause.
    let soon = root
        .create_intermediate("Soon Inter", &ca_options(Some(0), shifted(5, -1)))
        .unwrap();
    let device = soon
        .issue_device("dev-4", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let checks = run(&full(&device), None);
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    assert_eq!(find(&checks, VALIDITY_CHAIN).verdict, Verdict::Warning);
}

#[test]
fn a_chain_out_of_order_is_only_a_chain_order_problem() {
    let (root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let leaf = device.credential().certificate().clone();
    // The key's certificate second: chain.order, and key.match defers to it.
    let swapped = held(
        vec![cert_of(&inter), leaf.clone(), cert_of(&root)],
        Some(key_of(device.credential())),
    );
    let checks = run(&swapped, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    let key = find(&checks, KEY_MATCH);
    assert_eq!(key.verdict, Verdict::Skipped);
    assert!(
        key.evidence.starts_with("see chain.order"),
        "{}",
        key.evidence
    );
    assert!(find(&checks, CHAIN_ORDER).evidence.contains("#2 'dev-1'"));
    // Leaf first, then the root before the intermediate, no key.
    let reversed = held(vec![leaf.clone(), cert_of(&root), cert_of(&inter)], None);
    let checks = run(&reversed, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .contains("sent as 'dev-1', 'Doctor Root', 'Doctor Inter'")
    );
    // Upside down, no key: the bottom of the chain is taken for the leaf, so the CA first is
    // not judged as a device certificate.
    let upside_down = held(vec![cert_of(&root), cert_of(&inter), leaf], None);
    let checks = run(&upside_down, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .starts_with("the leaf (it issued none of the others) is #3 'dev-1'")
    );
}

#[test]
fn an_unrelated_certificate_or_a_namesake_is_a_chain_order_problem() {
    let (root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let leaf = device.credential().certificate().clone();
    let key = || Some(key_of(device.credential()));
    let other =
        CertificateAuthority::create_root("Other Root", &ca_options(None, days(365))).unwrap();
    let stranger = held(
        vec![
            leaf.clone(),
            cert_of(&inter),
            cert_of(&root),
            cert_of(&other),
        ],
        key(),
    );
    let checks = run(&stranger, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .contains("#4 'Other Root' is not in the chain of 'dev-1'")
    );
    // An intermediate of the same name from another hierarchy (a re-created CA).
    let twin = other
        .create_intermediate("Doctor Inter", &ca_options(Some(0), days(365)))
        .unwrap();
    let namesake = held(vec![leaf.clone(), cert_of(&twin)], key());
    let checks = run(&namesake, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .contains("bears the issuer name of 'dev-1' but its key did not sign it")
    );
    // The intermediate left out between the leaf and the root.
    let gap = held(vec![leaf, cert_of(&root)], key());
    let checks = run(&gap, Some("dev-1"));
    only(&checks, CHAIN_ORDER, Cause::ChainOrder);
    assert!(
        find(&checks, CHAIN_ORDER)
            .evidence
            .contains("is it missing?")
    );
}

#[test]
fn a_duplicate_is_a_warning() {
    let (root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let doubled = held(
        vec![
            device.credential().certificate().clone(),
            cert_of(&inter),
            cert_of(&inter),
            cert_of(&root),
        ],
        Some(key_of(device.credential())),
    );
    let checks = run(&doubled, Some("dev-1"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    let order = find(&checks, CHAIN_ORDER);
    assert_eq!(order.verdict, Verdict::Warning);
    assert!(
        order.evidence.contains("#3 'Doctor Inter'"),
        "{}",
        order.evidence
    );
    // A renewed copy of the intermediate (same name and key) next to the original: extra,
    // not foreign.
    let renewed_cert = custom_leaf(
        &root,
        Some("Doctor Inter"),
        inter.credential().key().key_pair(),
        |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            p.extended_key_usages = Vec::new();
        },
    );
    let renewed = held(
        vec![
            device.credential().certificate().clone(),
            cert_of(&inter),
            renewed_cert,
            cert_of(&root),
        ],
        Some(key_of(device.credential())),
    );
    let checks = run(&renewed, Some("dev-1"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    let order = find(&checks, CHAIN_ORDER);
    assert_eq!(order.verdict, Verdict::Warning);
    assert!(
        order
            .evidence
            .contains("#3 'Doctor Inter' issued 'dev-1' too"),
        "{}",
        order.evidence
    );
}

#[test]
fn a_key_of_another_device_is_a_key_mismatch() {
    let (_root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let other = inter
        .issue_device("dev-9", KeyAlgorithm::Rsa2048, days(365))
        .unwrap();
    let mut mixed = full(&device);
    mixed.key = Some(key_of(other.credential()));
    let checks = run(&mixed, Some("dev-1"));
    only(&checks, KEY_MATCH, Cause::KeyMismatch);
    assert!(
        find(&checks, KEY_MATCH)
            .evidence
            .contains("rsa-2048 key belongs to none")
    );
}

#[test]
fn the_cn_and_the_registration_id() {
    let (root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let checks = run(&full(&device), Some("dev-2"));
    only(&checks, REGISTRATION_ID_MATCHES, Cause::CnMismatch);
    assert!(
        find(&checks, REGISTRATION_ID_MATCHES)
            .evidence
            .contains("CN is 'dev-1' but the registration id is 'dev-2'")
    );
    // Equal but for case: DPS takes it, the hub's device id is the CN's spelling.
    let checks = run(&full(&device), Some("DEV-1"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    assert_eq!(
        find(&checks, REGISTRATION_ID_MATCHES).verdict,
        Verdict::Warning
    );
    // A CN no registration id can be.
    let bad = custom_device(&root, &inter, Some("dev 1/a"), |_| {});
    let checks = run(&bad, None);
    only(&checks, REGISTRATION_ID_VALID, Cause::InvalidRegistrationId);
    assert!(
        find(&checks, REGISTRATION_ID_VALID)
            .evidence
            .contains("' '")
    );
    // No CN at all: one problem, even with an id given.
    let nameless = custom_device(&root, &inter, None, |_| {});
    let checks = run(&nameless, Some("dev-1"));
    only(&checks, REGISTRATION_ID_VALID, Cause::InvalidRegistrationId);
    assert_eq!(
        find(&checks, REGISTRATION_ID_MATCHES).verdict,
        Verdict::Skipped
    );
}

#[test]
fn a_leaf_unfit_for_client_authentication() {
    let (root, inter) = hierarchy();
    // A CA certificate used as the device's.
    let ca_leaf = root
        .create_intermediate("dev-ca", &ca_options(None, days(365)))
        .unwrap();
    let as_device = held(
        vec![cert_of(&ca_leaf), cert_of(&root)],
        Some(key_of(ca_leaf.credential())),
    );
    let checks = run(&as_device, Some("dev-ca"));
    only(&checks, LEAF_PROFILE, Cause::UnfitLeaf);
    assert!(find(&checks, LEAF_PROFILE).evidence.contains("CA:TRUE"));
    // A TLS server certificate: extendedKeyUsage serverAuth only.
    let server = inter
        .issue_server(&["dev-srv".to_string()], days(365))
        .unwrap();
    let mut certificates = vec![server.certificate().clone()];
    certificates.extend(server.issuers().iter().cloned());
    let checks = run(&held(certificates, Some(key_of(&server))), Some("dev-srv"));
    only(&checks, LEAF_PROFILE, Cause::UnfitLeaf);
    assert!(
        find(&checks, LEAF_PROFILE)
            .evidence
            .contains("extendedKeyUsage (serverAuth) lacks clientAuth")
    );
    // keyUsage without digitalSignature.
    let encipher = custom_device(&root, &inter, Some("dev-enc"), |p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    });
    let checks = run(&encipher, Some("dev-enc"));
    only(&checks, LEAF_PROFILE, Cause::UnfitLeaf);
    assert!(
        find(&checks, LEAF_PROFILE)
            .evidence
            .contains("lacks digitalSignature")
    );
    // anyExtendedKeyUsage and no keyUsage at all are fine.
    let lenient = custom_device(&root, &inter, Some("dev-any"), |p| {
        p.key_usages = Vec::new();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Any];
    });
    healthy(&run(&lenient, Some("dev-any")));
}

#[test]
fn keys_azure_does_not_take() {
    use rsa::pkcs8::EncodePublicKey;
    let (root, inter) = hierarchy();
    // RSA-1024: too short (ring will not sign with it, so the device holds no key here).
    let small = rsa::PrivateKey::new(&mut crate::pki::keys::RingRng, 1024).unwrap();
    let spki = small
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki).unwrap();
    let leaf = custom_leaf(&inter, Some("dev-rsa1024"), &spki, |_| {});
    let checks = run(
        &held(vec![leaf, cert_of(&inter), cert_of(&root)], None),
        Some("dev-rsa1024"),
    );
    only(&checks, ALGORITHMS, Cause::UnsupportedAlgorithm);
    let evidence = &find(&checks, ALGORITHMS).evidence;
    assert!(
        evidence.contains("#1 'dev-rsa1024' has an rsa-1024 key"),
        "{evidence}"
    );
    assert!(evidence.contains("Azure takes RSA keys of 2048 bits or more"));
    // Ed25519.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let leaf = custom_leaf(&inter, Some("dev-ed"), &ed, |_| {});
    let checks = run(
        &held(vec![leaf, cert_of(&inter), cert_of(&root)], None),
        Some("dev-ed"),
    );
    only(&checks, ALGORITHMS, Cause::UnsupportedAlgorithm);
    assert!(
        find(&checks, ALGORITHMS)
            .evidence
            .contains("an Ed25519 key")
    );
    // Every key dpskit makes is fine.
    for algorithm in KeyAlgorithm::ALL {
        let device = inter.issue_device("dev-ok", algorithm, days(365)).unwrap();
        healthy(&run(&full(&device), Some("dev-ok")));
    }
}

/// `cert` re-signed by `issuer_key` (RSA) with sha1WithRSAEncryption: its TBS with the
/// signature algorithm swapped (the OIDs differ in their last byte only, so no length
/// changes), and a PKCS#1 v1.5 signature over its SHA-1 digest.
fn resigned_with_sha1(cert: &Certificate, issuer_key: &PrivateKey) -> Certificate {
    use crate::pki::keys::der_tlv;
    use rsa::pkcs8::DecodePrivateKey;
    const SHA256_WITH_RSA: [u8; 11] = [6, 9, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 1, 1, 0x0B];
    const SHA1_WITH_RSA: [u8; 11] = [6, 9, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 1, 1, 0x05];
    const SHA1_DIGEST_INFO: [u8; 15] = [
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2B, 0x0E, 0x03, 0x02, 0x1A, 0x05, 0x00, 0x04, 0x14,
    ];
    let parsed = cert.parsed();
    let mut tbs = parsed.tbs_certificate.as_ref().to_vec();
    let at = tbs
        .windows(SHA256_WITH_RSA.len())
        .position(|w| w == SHA256_WITH_RSA)
        .expect("an RSA-signed certificate");
    tbs[at..at + SHA1_WITH_RSA.len()].copy_from_slice(&SHA1_WITH_RSA);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &tbs);
    let mut digest_info = SHA1_DIGEST_INFO.to_vec();
    digest_info.extend_from_slice(digest.as_ref());
    let rsa_key = rsa::PrivateKey::from_pkcs8_der(issuer_key.pkcs8_der()).unwrap();
    let signature = rsa_key
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &digest_info)
        .unwrap();
    let mut algorithm = SHA1_WITH_RSA.to_vec();
    algorithm.extend_from_slice(&[5, 0]);
    let mut bits = vec![0];
    bits.extend_from_slice(&signature);
    let body = [tbs, der_tlv(0x30, &algorithm), der_tlv(0x03, &bits)].concat();
    Certificate::from_der(&der_tlv(0x30, &body)).unwrap()
}

#[test]
fn a_sha1_signature_is_an_unsupported_algorithm() {
    let root = CertificateAuthority::create_root(
        "RSA Root",
        &CaOptions {
            algorithm: KeyAlgorithm::Rsa2048,
            ..ca_options(None, days(365))
        },
    )
    .unwrap();
    let device = root
        .issue_device("dev-sha1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let signer = root.credential().key();
    let leaf = resigned_with_sha1(device.credential().certificate(), signer);
    assert_eq!(leaf.info().signature_algorithm, "sha1WithRSAEncryption");
    let sha1 = held(
        vec![leaf, cert_of(&root)],
        Some(key_of(device.credential())),
    );
    let checks = run(&sha1, Some("dev-sha1"));
    // The signature still verifies: only the algorithm is wrong.
    only(&checks, ALGORITHMS, Cause::UnsupportedAlgorithm);
    assert!(
        find(&checks, ALGORITHMS)
            .evidence
            .contains("#1 'dev-sha1' is signed with sha1WithRSAEncryption")
    );
    // The original, signed with SHA-256, is healthy.
    healthy(&run(&full(&device), Some("dev-sha1")));
}

#[test]
fn the_signature_rules_name_sha1_and_md5() {
    assert_eq!(signature_refusal("sha256WithRSAEncryption"), None);
    assert_eq!(signature_refusal("ecdsa-with-SHA384"), None);
    assert_eq!(signature_refusal("sha1WithRSAEncryption"), Some(true));
    assert_eq!(signature_refusal("1.2.840.113549.1.1.4"), Some(true));
    assert_eq!(signature_refusal("1.2.840.10045.4.1"), Some(true));
    assert_eq!(signature_refusal("rsassaPss"), Some(false));
    assert_eq!(key_refusal("rsa-2048"), None);
    assert_eq!(key_refusal("ec-p521"), None);
    assert!(key_refusal("rsa-1024").is_some());
    assert!(key_refusal("ec-1.3.132.0.10").is_some());
}

#[test]
fn a_ca_that_may_not_issue_what_is_below_it() {
    let (root, inter) = hierarchy();
    // 'Doctor Inter' has pathLenConstraint 0, yet a CA follows below it (made with rcgen:
    // dpskit refuses to).
    let sub_key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let sub_cert = custom_leaf(&inter, Some("Sub CA"), sub_key.key_pair(), |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.extended_key_usages = Vec::new();
    });
    let sub = CertificateAuthority::from_credential(
        Credential::new(sub_cert, sub_key, vec![cert_of(&inter), cert_of(&root)]).unwrap(),
    )
    .unwrap();
    let device = sub
        .issue_device("dev-deep", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let checks = run(&full(&device), Some("dev-deep"));
    only(&checks, CHAIN_CA_CONSTRAINTS, Cause::PathLength);
    assert!(
        find(&checks, CHAIN_CA_CONSTRAINTS)
            .evidence
            .contains("'Doctor Inter' allows 0 CA certificate(s) below it")
    );
    // A device certificate that signed another: not a CA, no keyCertSign.
    let first = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let signer = CertificateAuthority::from_credential(
        Credential::new(
            first.credential().certificate().clone(),
            key_of(first.credential()),
            vec![cert_of(&inter), cert_of(&root)],
        )
        .unwrap(),
    );
    assert!(signer.is_err(), "dpskit refuses a leaf as a CA");
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &first.credential().certificate().der().into(),
        first.credential().key().key_pair(),
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dev-child");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now() - 300).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now() + 90 * DAY).unwrap();
    let child = params.signed_by(key.key_pair(), &issuer).unwrap();
    let child = Certificate::from_der(child.der()).unwrap();
    let chained = held(
        vec![
            child,
            first.credential().certificate().clone(),
            cert_of(&inter),
            cert_of(&root),
        ],
        Some(key),
    );
    let checks = run(&chained, Some("dev-child"));
    only(&checks, CHAIN_CA_CONSTRAINTS, Cause::PathLength);
    let evidence = &find(&checks, CHAIN_CA_CONSTRAINTS).evidence;
    assert!(
        evidence.contains("'dev-1' issued 'dev-child' but is not a CA"),
        "{evidence}"
    );
    assert!(evidence.contains("lacks keyCertSign"), "{evidence}");
}

#[test]
fn the_leaf_alone_is_a_warning_named_by_where_it_came_from() {
    let (_root, inter) = hierarchy();
    let device = inter
        .issue_device("dev-1", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("dev-1.pem");
    let key_path = dir.path().join("dev-1.key.pem");
    std::fs::write(&cert_path, device.credential().certificate_pem()).unwrap();
    std::fs::write(&key_path, device.credential().private_key_pem()).unwrap();
    let loaded = credential::load_files(&cert_path, None, Some(&key_path), None);
    let checks = run(loaded.credential.as_ref().unwrap(), Some("dev-1"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    let complete = find(&checks, CHAIN_COMPLETE);
    assert_eq!(complete.verdict, Verdict::Warning);
    assert_eq!(complete.cause, Some(Cause::MissingIntermediate));
    assert!(
        complete.evidence.starts_with("no chain is sent"),
        "{}",
        complete.evidence
    );
    assert!(complete.evidence.contains("issued by 'CN=Doctor Inter'"));
    // The same leaf in a PKCS#12 file without its chain.
    let alone = Credential::new(
        device.credential().certificate().clone(),
        key_of(device.credential()),
        Vec::new(),
    )
    .unwrap();
    let pfx = crate::pki::to_pkcs12(&alone, "secret", false, "dev-1").unwrap();
    let pfx_path = dir.path().join("dev-1.pfx");
    std::fs::write(&pfx_path, pfx).unwrap();
    let loaded = credential::load_pkcs12(&pfx_path, "secret");
    let checks = run(loaded.credential.as_ref().unwrap(), Some("dev-1"));
    assert!(causes(&checks).is_empty(), "{checks:#?}");
    let complete = find(&checks, CHAIN_COMPLETE);
    assert_eq!(complete.verdict, Verdict::Warning);
    assert_eq!(complete.cause, Some(Cause::Pkcs12WithoutChain));
    assert!(complete.fix.as_deref().unwrap().contains("PKCS#12"));
}

#[test]
fn no_certificate_runs_no_check() {
    assert!(run(&held(Vec::new(), None), Some("dev-1")).is_empty());
}
