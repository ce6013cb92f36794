//! Unit tests of the X.509 toolkit: profiles, key formats (made by OpenSSL, the reference),
//! proof-of-possession certificates, chain verification failures.

use std::path::Path;
use std::process::Command;

use super::*;
use crate::pki::issue::now;

const DAY: i64 = 86_400;

fn days(n: i64) -> Validity {
    Validity::days(n, None).unwrap()
}

fn ca_options(algorithm: KeyAlgorithm, path_length: Option<u8>) -> CaOptions {
    CaOptions {
        algorithm,
        validity: days(3650),
        path_length,
        organization: None,
    }
}

fn hierarchy() -> (CertificateAuthority, CertificateAuthority) {
    let root =
        CertificateAuthority::create_root("Test Root", &ca_options(KeyAlgorithm::EcP256, None))
            .unwrap();
    let inter = root
        .create_intermediate(
            "Test Intermediate",
            &ca_options(KeyAlgorithm::EcP256, Some(0)),
        )
        .unwrap();
    (root, inter)
}

/// Runs an openssl command line (arguments split on spaces) in `dir`; the tests need openssl
/// (CI installs it).
fn openssl(dir: &Path, command: &str) -> String {
    let output = Command::new("openssl")
        .args(command.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is required by these tests");
    assert!(
        output.status.success(),
        "openssl {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `openssl req` making a fresh P-256 key in `key` and, for `subject`, either a CSR or (with
/// `extra` starting `-x509`) a self-signed certificate, written to `out`.
fn openssl_p256_request(dir: &Path, key: &str, subject: &str, out: &str, extra: &str) -> String {
    openssl(
        dir,
        &format!(
            "req -new {extra} -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -subj {subject} -out {out}"
        ),
    )
}

#[test]
fn ca_profile_is_azure_correct() {
    let (root, inter) = hierarchy();
    let root_info = root.credential().certificate().info();
    assert!(root_info.is_ca && root_info.is_self_signed);
    assert_eq!(root_info.path_length, None);
    assert_eq!(
        root_info.key_usage,
        ["digitalSignature", "keyCertSign", "cRLSign"]
    );
    assert!(root_info.subject_key_identifier.is_some());
    let info = inter.credential().certificate().info();
    assert!(info.is_ca && !info.is_self_signed);
    assert_eq!(info.path_length, Some(0));
    assert_eq!(
        info.authority_key_identifier,
        root_info.subject_key_identifier
    );
    assert_eq!(info.issuer, "CN=Test Root");
    // 128 random bits: a leading zero byte is possible but 8 in a row is not plausible.
    assert!(info.serial_number.len() >= 30, "{}", info.serial_number);
}

#[test]
fn device_profile_is_azure_correct() {
    let (_, inter) = hierarchy();
    let device = inter
        .issue_device("sensor-001", KeyAlgorithm::EcP256, days(365))
        .unwrap();
    let info = device.credential().certificate().info();
    assert_eq!(device.registration_id(), "sensor-001");
    assert_eq!(info.common_name.as_deref(), Some("sensor-001"));
    assert!(!info.is_ca);
    assert_eq!(info.key_usage, ["digitalSignature"]);
    assert_eq!(info.extended_key_usage, ["clientAuth"]);
    assert_eq!(
        info.authority_key_identifier,
        inter
            .credential()
            .certificate()
            .info()
            .subject_key_identifier
    );
    assert_eq!(info.not_after - info.not_before, 365 * DAY);
    assert!(info.not_before <= now() && now() - info.not_before < 3600);
    // The chain a device sends: leaf + intermediate, not the root.
    assert_eq!(
        device
            .credential()
            .chain_pem()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert_eq!(
        device
            .credential()
            .full_chain_pem()
            .matches("BEGIN CERTIFICATE")
            .count(),
        3
    );
}

#[test]
fn every_algorithm_issues_verifiable_chains() {
    for algorithm in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let root = CertificateAuthority::create_root("Root", &ca_options(algorithm, None)).unwrap();
        let inter = root
            .create_intermediate("Inter", &ca_options(algorithm, Some(0)))
            .unwrap();
        let device = inter.issue_device("dev", algorithm, days(30)).unwrap();
        assert_eq!(device.credential().key().algorithm(), algorithm);
        assert_eq!(
            device.credential().certificate().info().key_algorithm,
            algorithm.name()
        );
        let path = verify_chain(
            device.credential().certificate(),
            &[inter.credential().certificate().clone()],
            &[root.credential().certificate().clone()],
            now(),
        )
        .unwrap();
        assert_eq!(path.len(), 3, "{algorithm}");
    }
}

#[test]
fn intermediates_nest_to_any_depth_within_path_length() {
    let root =
        CertificateAuthority::create_root("Root", &ca_options(KeyAlgorithm::EcP256, None)).unwrap();
    let first = root
        .create_intermediate("Inter 1", &ca_options(KeyAlgorithm::EcP256, Some(1)))
        .unwrap();
    let second = first
        .create_intermediate("Inter 2", &ca_options(KeyAlgorithm::EcP256, Some(0)))
        .unwrap();
    let error = second
        .create_intermediate("Inter 3", &ca_options(KeyAlgorithm::EcP256, Some(0)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("pathLenConstraint 0"), "{error}");
    let device = second
        .issue_device("deep", KeyAlgorithm::EcP256, days(1))
        .unwrap();
    assert_eq!(device.credential().issuers().len(), 3);
    let path = verify_chain(
        device.credential().certificate(),
        &device.credential().issuers()[..2],
        &[root.credential().certificate().clone()],
        now(),
    )
    .unwrap();
    assert_eq!(path.len(), 4);
}

#[test]
fn verification_certificate_for_root_and_intermediate() {
    let (root, inter) = hierarchy();
    for ca in [&root, &inter] {
        let code = "106A5SD242AF512B3498BD6098C4941E66R34H268DDB3288";
        let cert = ca.create_verification_certificate(code, days(30)).unwrap();
        assert_eq!(cert.info().common_name.as_deref(), Some(code));
        assert!(cert.is_signed_by(ca.credential().certificate()));
        assert_eq!(
            cert.info().issuer,
            ca.credential().certificate().info().subject
        );
    }
    assert!(root.create_verification_certificate("", days(30)).is_err());
    assert!(
        root.create_verification_certificate(&"A".repeat(65), days(30))
            .is_err()
    );
}

#[test]
fn validity_bounds_are_enforced() {
    for bad in [0, -1, MAX_VALIDITY_DAYS + 1] {
        let message = Validity::days(bad, None).unwrap_err().to_string();
        assert!(message.contains("out of range"), "{message}");
    }
    assert!(Validity::days(10, Some(253_402_300_000)).is_err());
}

use crate::pki::issue::MAX_VALIDITY_DAYS;

#[test]
fn chain_failures_say_why() {
    let (root, inter) = hierarchy();
    let (other_root, _) = hierarchy();
    let device = inter
        .issue_device("dev", KeyAlgorithm::EcP256, days(10))
        .unwrap();
    let leaf = device.credential().certificate();
    let intermediates = [inter.credential().certificate().clone()];
    let anchors = [root.credential().certificate().clone()];

    // Intermediate missing from the chain.
    let e = verify_chain(leaf, &[], &anchors, now())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown issuer") && e.contains("Test Intermediate"),
        "{e}"
    );

    // Same names, different keys: the other hierarchy's root cannot vouch for this one.
    let e = verify_chain(
        leaf,
        &intermediates,
        &[other_root.credential().certificate().clone()],
        now(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad signature"), "{e}");

    // Expired and not yet valid.
    let e = verify_chain(leaf, &intermediates, &anchors, now() + 11 * DAY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has expired"), "{e}");
    let e = verify_chain(leaf, &intermediates, &anchors, now() - DAY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not yet valid"), "{e}");

    // A device certificate used as an issuer.
    let rogue = Credential::from_pem(
        device.credential().certificate_pem().as_bytes(),
        device.credential().private_key_pem().as_bytes(),
        None,
    )
    .unwrap();
    let e = CertificateAuthority::from_credential(rogue)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a CA"), "{e}");

    // No anchors at all.
    assert!(verify_chain(leaf, &intermediates, &[], now()).is_err());
}

/// OpenSSL happily signs a CA under a pathlen:0 root (our API refuses to); verify_chain must
/// catch the violation.
#[test]
fn path_length_violations_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
    )
    .unwrap();
    openssl_p256_request(
        d,
        "rk.pem",
        "/CN=Strict-Root",
        "root.pem",
        "-x509 -days 5 -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,keyCertSign",
    );
    openssl_p256_request(d, "ik.pem", "/CN=Sneaky-Intermediate", "i.csr", "");
    openssl(
        d,
        "x509 -req -in i.csr -CA root.pem -CAkey rk.pem -days 5 -extfile ca.ext -out inter.pem",
    );
    let root = Certificate::from_pem(&std::fs::read(d.join("root.pem")).unwrap()).unwrap();
    let inter = CertificateAuthority::from_pem(
        &std::fs::read(d.join("inter.pem")).unwrap(),
        &std::fs::read(d.join("ik.pem")).unwrap(),
        None,
    )
    .unwrap();
    let device = inter
        .issue_device("dev", KeyAlgorithm::EcP256, days(1))
        .unwrap();
    let e = verify_chain(
        device.credential().certificate(),
        &[inter.credential().certificate().clone()],
        &[root],
        now(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("path length exceeded") && e.contains("Strict-Root"),
        "{e}"
    );
}

#[test]
fn bulk_issuance_keeps_order_and_rejects_bad_ids() {
    let (_, inter) = hierarchy();
    let ids: Vec<String> = (0..300).map(|i| format!("sensor-{i:05}")).collect();
    let devices = inter
        .issue_devices(&ids, KeyAlgorithm::EcP256, days(365))
        .unwrap();
    assert_eq!(devices.len(), 300);
    let mut serials = std::collections::HashSet::new();
    for (id, device) in ids.iter().zip(&devices) {
        assert_eq!(device.registration_id(), id);
        assert!(
            serials.insert(
                device
                    .credential()
                    .certificate()
                    .info()
                    .serial_number
                    .clone()
            )
        );
    }
    let mut bad = ids.clone();
    bad[150] = "not valid!".into();
    let e = inter
        .issue_devices(&bad, KeyAlgorithm::EcP256, days(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("#150"), "{e}");
    let dup = vec!["Dev-1".to_string(), "dev-1".to_string()];
    assert!(
        inter
            .issue_devices(&dup, KeyAlgorithm::EcP256, days(1))
            .is_err()
    );
    assert!(
        inter
            .issue_devices(&[], KeyAlgorithm::EcP256, days(1))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn keys_round_trip_through_encrypted_pkcs8() {
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let pem = key.encrypted_pkcs8_pem(b"s3cret").unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let back = PrivateKey::from_bytes(pem.as_bytes(), Some(b"s3cret")).unwrap();
    assert_eq!(back.pkcs8_der(), key.pkcs8_der());
    let e = PrivateKey::from_bytes(pem.as_bytes(), Some(b"wrong"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong password"), "{e}");
    let e = PrivateKey::from_bytes(pem.as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("password is needed"), "{e}");
}

/// A key format: its name, the openssl commands that make `k.pem`, and its password.
type KeyFormatCase<'a> = (&'a str, &'a [&'a str], Option<&'a str>);

/// Every key format OpenSSL 3 writes loads, and the CA made by OpenSSL issues devices that
/// `openssl verify` accepts.
#[test]
fn openssl_made_cas_load_in_every_key_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[KeyFormatCase] = &[
        (
            "rsa-pkcs8-encrypted",
            &["genrsa -aes256 -passout pass:1234 -out k.pem 2048"],
            Some("1234"),
        ),
        (
            "rsa-pkcs1-legacy-encrypted",
            &["genrsa -traditional -aes256 -passout pass:1234 -out k.pem 2048"],
            Some("1234"),
        ),
        (
            "rsa-pkcs1-plain",
            &["genrsa -traditional -out k.pem 2048"],
            None,
        ),
        (
            "ec-sec1-plain",
            &["ecparam -name prime256v1 -genkey -noout -out k.pem"],
            None,
        ),
        (
            "ec-sec1-legacy-encrypted",
            &[
                "ecparam -name secp384r1 -genkey -noout -out plain.pem",
                "ec -in plain.pem -aes256 -passout pass:1234 -out k.pem",
            ],
            Some("1234"),
        ),
        (
            "ec-pkcs8-plain",
            &["genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem"],
            None,
        ),
        (
            "ec-des3-legacy",
            &[
                "ecparam -name prime256v1 -genkey -noout -out plain.pem",
                "ec -in plain.pem -des3 -passout pass:1234 -out k.pem",
            ],
            Some("1234"),
        ),
    ];
    for (name, commands, password) in cases {
        for command in *commands {
            openssl(d, command);
        }
        let passin = password.map_or(String::new(), |p| format!("-passin pass:{p}"));
        openssl(
            d,
            &format!(
                "req -x509 -new -key k.pem -subj /CN=OpenSSL-CA -days 30 -out ca.pem \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign {passin}"
            ),
        );
        let cert = std::fs::read(d.join("ca.pem")).unwrap();
        let key = std::fs::read(d.join("k.pem")).unwrap();
        let password = password.map(str::as_bytes);
        let ca = CertificateAuthority::from_pem(&cert, &key, password)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if password.is_some() {
            assert!(CertificateAuthority::from_pem(&cert, &key, Some(b"nope")).is_err());
        }
        let device = ca
            .issue_device("openssl-signed", KeyAlgorithm::EcP256, days(5))
            .unwrap();
        std::fs::write(d.join("dev.pem"), device.credential().certificate_pem()).unwrap();
        let out = openssl(d, "verify -CAfile ca.pem dev.pem");
        assert!(out.contains("dev.pem: OK"), "{name}: {out}");
    }
}

#[test]
fn openssl_csr_is_signed_with_the_device_profile() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_p256_request(d, "k.pem", "/CN=csr-device-7", "req.pem", "");
    let (root, inter) = hierarchy();
    let cert = inter
        .sign_csr(&std::fs::read(d.join("req.pem")).unwrap(), None, days(30))
        .unwrap();
    let info = cert.info();
    assert_eq!(info.common_name.as_deref(), Some("csr-device-7"));
    assert_eq!(info.extended_key_usage, ["clientAuth"]);
    std::fs::write(d.join("dev.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("inter.pem"), inter.credential().certificate_pem()).unwrap();
    std::fs::write(d.join("root.pem"), root.credential().certificate_pem()).unwrap();
    let out = openssl(d, "verify -CAfile root.pem -untrusted inter.pem dev.pem");
    assert!(out.contains("OK"), "{out}");
    // The key of the CSR is the key of the certificate.
    let device = Credential::from_pem(
        cert.pem().as_bytes(),
        &std::fs::read(d.join("k.pem")).unwrap(),
        None,
    );
    assert!(device.is_ok());
    assert!(inter.sign_csr(b"garbage", None, days(1)).is_err());
    let e = inter
        .sign_csr(
            &std::fs::read(d.join("req.pem")).unwrap(),
            Some("bad id!"),
            days(1),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid registration id"), "{e}");
}

#[test]
fn pkcs12_round_trips_in_both_flavours() {
    let (_, inter) = hierarchy();
    let device = inter
        .issue_device("pfx-device", KeyAlgorithm::EcP256, days(30))
        .unwrap();
    for legacy in [false, true] {
        let pfx =
            crate::pki::pkcs12::to_pkcs12(device.credential(), "pw", legacy, "pfx-device").unwrap();
        let back = crate::pki::pkcs12::from_pkcs12(&pfx, "pw").unwrap();
        assert_eq!(back.certificate(), device.credential().certificate());
        assert_eq!(back.issuers(), device.credential().issuers());
        assert_eq!(
            back.key().pkcs8_der(),
            device.credential().key().pkcs8_der()
        );
        assert!(crate::pki::pkcs12::from_pkcs12(&pfx, "wrong").is_err());
    }
}

#[test]
fn garbage_never_panics() {
    let inputs: &[&[u8]] = &[
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n",
        &[0x30, 0x82, 0xff, 0xff, 0x00],
    ];
    for input in inputs {
        assert!(Certificate::all_from_bytes(input).is_err());
        assert!(PrivateKey::from_bytes(input, Some(b"x")).is_err());
        assert!(crate::pki::pkcs12::from_pkcs12(input, "x").is_err());
    }
}

#[test]
fn permitted_names_match_as_rfc_5280_name_constraints_do() {
    let localhost = PermittedName::Dns("localhost".into());
    for host in [
        "localhost",
        "LOCALHOST",
        "hub.localhost",
        "a.b.localhost",
        "localhost.",
    ] {
        assert!(localhost.permits(host), "{host}");
    }
    // A label boundary is needed: "xlocalhost" is another name, not one below localhost.
    for host in [
        "xlocalhost",
        "localhost.com",
        ".localhost",
        "127.0.0.1",
        "example.com",
    ] {
        assert!(!localhost.permits(host), "{host}");
    }
    let loopback = PermittedName::Ip("127.0.0.0".parse().unwrap(), 8);
    for host in ["127.0.0.1", "127.255.255.254", "127.0.0.2"] {
        assert!(loopback.permits(host), "{host}");
    }
    for host in [
        "128.0.0.1",
        "10.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
    ] {
        assert!(!loopback.permits(host), "{host}");
    }
    let one = PermittedName::Ip("::1".parse().unwrap(), 128);
    assert!(one.permits("::1"));
    assert!(!one.permits("::2"));
    assert!(PermittedName::Ip("0.0.0.0".parse().unwrap(), 0).permits("203.0.113.9"));
}
