//! The server trust bundle a device checks its servers against, and the `server.trust` check:
//! does it hold the root the servers chain to? Azure IoT Hub and DPS moved from the Baltimore
//! CyberTrust Root to DigiCert Global Root G2 in 2023 and Baltimore expired on 2025-05-12, so a
//! device whose bundle still holds only Baltimore fails every TLS handshake; the local cloud's
//! servers chain to its own CA instead. Roots are told apart by SHA-256 fingerprint, written
//! once here.

use std::path::Path;

use super::{Cause, Check};
use crate::pki::Certificate;
use crate::pki::chain::{describe, format_time};

/// SHA-256 fingerprint of DigiCert Global Root G2: the root Azure's servers chain to today.
pub const DIGICERT_GLOBAL_ROOT_G2_SHA256: &str =
    "CB3CCBB76031E5E0138F8DD39A23F9DE47FFC35E43C1144CEA27D46A5AB1CB5F";
/// SHA-256 fingerprint of the Baltimore CyberTrust Root: Azure's root before 2023, expired
/// 2025-05-12.
pub const BALTIMORE_CYBERTRUST_ROOT_SHA256: &str =
    "16AF57A9F676B0AB126095AA5EBADEF22AB31119D644AC95CD4B93DBF3F26AEB";
/// SHA-256 fingerprint of Microsoft RSA Root Certificate Authority 2017, which Azure asks
/// devices to hold too, for its next server certificate change.
pub const MICROSOFT_RSA_ROOT_2017_SHA256: &str =
    "C741F70F4B2A8D88BF2E71C14122EF53EF10EBA0CFA5E64CFA20F418853073E0";
/// SHA-256 fingerprint of Microsoft ECC Root Certificate Authority 2017 (as the RSA one).
pub const MICROSOFT_ECC_ROOT_2017_SHA256: &str =
    "358DF39D764AF9E1B766E9C972DF352EE15CFAC227AF6AD1D70E8E4A6EDCBA02";

/// Check id and title.
pub const ID: &str = "server.trust";
const TITLE: &str = "The server trust bundle";

const G2: &str = "DigiCert Global Root G2";
const BALTIMORE: &str = "Baltimore CyberTrust Root";
const MS_RSA: &str = "Microsoft RSA Root Certificate Authority 2017";
const MS_ECC: &str = "Microsoft ECC Root Certificate Authority 2017";
/// How many certificates evidence names before it says "and N more" (system bundles hold
/// over a hundred).
const NAMED_AT_MOST: usize = 5;

/// The servers a device talks to, and so the roots its trust bundle must hold.
#[derive(Clone, Debug)]
pub enum ServerRoots {
    /// Azure's public endpoints (DigiCert Global Root G2 today).
    Azure,
    /// Servers whose chain ends at these anchors (the local cloud's own CA).
    Custom {
        /// What the servers are, for evidence ("the local cloud").
        label: String,
        /// The anchors.
        anchors: Vec<Certificate>,
    },
}

/// A trust bundle as the device holds it.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    /// Where it came from (a path, or "the PEM given").
    pub source: String,
    /// Its certificates.
    pub certificates: Vec<Certificate>,
}

impl TrustBundle {
    /// Reads a bundle from PEM (every certificate) or one DER certificate; `source` names it
    /// in evidence. What does not parse is the `server.trust` problem (cause `Unreadable`):
    /// one bad block makes the whole bundle suspect, so none of it is used.
    pub fn from_pem(source: impl Into<String>, bytes: &[u8]) -> Result<TrustBundle, Check> {
        let source = source.into();
        match Certificate::all_from_bytes(bytes) {
            Ok(certificates) => Ok(TrustBundle {
                source,
                certificates,
            }),
            Err(e) => Err(unreadable(format!("{source}: {e}"))),
        }
    }

    /// Reads a bundle file (PEM or DER).
    pub fn load(path: impl AsRef<Path>) -> Result<TrustBundle, Check> {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(bytes) => Self::from_pem(path.display().to_string(), &bytes),
            Err(e) => Err(unreadable(format!("{}: {e}", path.display()))),
        }
    }

    fn holds_fingerprint(&self, sha256: &str) -> bool {
        self.certificates
            .iter()
            .any(|c| c.info().thumbprint_sha256.eq_ignore_ascii_case(sha256))
    }

    /// The bundle's certificate that stands for `anchor`: the same certificate, or one with
    /// the same subject and key (a re-issued root verifies the same server chains).
    fn find_anchor(&self, anchor: &Certificate) -> Option<&Certificate> {
        self.certificates.iter().find(|c| {
            *c == anchor || {
                let (ours, theirs) = (c.parsed(), anchor.parsed());
                ours.subject().as_raw() == theirs.subject().as_raw()
                    && ours.public_key().raw == theirs.public_key().raw
            }
        })
    }
}

fn unreadable(evidence: String) -> Check {
    Check::problem(
        ID,
        TITLE,
        Cause::Unreadable,
        evidence,
        "Give the trust bundle as PEM certificates (-----BEGIN CERTIFICATE-----) or one DER certificate.",
    )
}

/// The `server.trust` check; skipped when the device's bundle was not given. A bundle holding
/// an expired certificate is at least a warning.
pub fn check(bundle: Option<&TrustBundle>, servers: &ServerRoots, now: i64) -> Check {
    let Some(bundle) = bundle else {
        return Check::skipped(
            ID,
            TITLE,
            "no trust bundle given: the one the device uses by default is not checked",
        );
    };
    let expired: Vec<String> = bundle
        .certificates
        .iter()
        .filter(|c| c.info().not_after < now)
        .map(|c| {
            format!(
                "{} (expired {})",
                describe(c),
                format_time(c.info().not_after)
            )
        })
        .collect();
    let expired_note = if expired.is_empty() {
        String::new()
    } else {
        format!("; expired in the bundle: {}", name_some(&expired))
    };
    let size = format!(
        "{} holds {} certificate(s)",
        bundle.source,
        bundle.certificates.len()
    );
    let has_g2 = bundle.holds_fingerprint(DIGICERT_GLOBAL_ROOT_G2_SHA256);
    let has_baltimore = bundle.holds_fingerprint(BALTIMORE_CYBERTRUST_ROOT_SHA256);
    let stale_fix = format!(
        "Replace the bundle with one holding {G2} (and {MS_RSA} and {MS_ECC}), as Azure's \
         2023 root migration asks: https://cacerts.digicert.com/DigiCertGlobalRootG2.crt.pem."
    );
    match servers {
        ServerRoots::Azure if has_g2 => {
            let has_rsa = bundle.holds_fingerprint(MICROSOFT_RSA_ROOT_2017_SHA256);
            let has_ecc = bundle.holds_fingerprint(MICROSOFT_ECC_ROOT_2017_SHA256);
            let present = |held: bool| if held { "present" } else { "absent" };
            let evidence = format!(
                "{size}, {G2} among them: the root Azure IoT Hub and DPS servers chain to; \
                 {MS_RSA}: {}, {MS_ECC}: {}{expired_note}",
                present(has_rsa),
                present(has_ecc)
            );
            if !has_rsa && !has_ecc {
                Check::warning(
                    ID,
                    TITLE,
                    None,
                    evidence,
                    format!(
                        "Add {MS_RSA} and {MS_ECC} to the bundle: Azure recommends devices \
                         hold them for its next server certificate change."
                    ),
                )
            } else if !expired.is_empty() {
                expired_warning(evidence)
            } else {
                Check::ok(ID, TITLE, evidence)
            }
        }
        ServerRoots::Azure if has_baltimore => Check::problem(
            ID,
            TITLE,
            Cause::StaleTrustBundle,
            format!(
                "{size}: {BALTIMORE} but not {G2}, the root Azure IoT Hub and DPS servers \
                 chain to since 2023{expired_note}"
            ),
            stale_fix,
        ),
        ServerRoots::Azure => Check::problem(
            ID,
            TITLE,
            Cause::UntrustedServer,
            format!(
                "{size} ({}), and not {G2}, the root Azure IoT Hub and DPS servers chain \
                 to{expired_note}",
                held_names(bundle)
            ),
            format!("Add {G2} (and {MS_RSA} and {MS_ECC}) to the device's trust bundle."),
        ),
        ServerRoots::Custom { label, anchors } => {
            let wanted = anchors
                .iter()
                .map(|a| {
                    format!(
                        "{} (SHA-256 {})",
                        describe(a),
                        short_fingerprint(&a.info().thumbprint_sha256)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if let Some(held) = anchors.iter().find_map(|a| bundle.find_anchor(a)) {
                let evidence = format!(
                    "{size}, {label}'s CA {} among them{expired_note}",
                    describe(held)
                );
                if expired.is_empty() {
                    Check::ok(ID, TITLE, evidence)
                } else {
                    expired_warning(evidence)
                }
            } else if has_baltimore && !has_g2 {
                Check::problem(
                    ID,
                    TITLE,
                    Cause::StaleTrustBundle,
                    format!(
                        "{size}: {BALTIMORE}, retired by Azure in 2023, but not {G2}; and \
                         {label}'s CA {wanted} is missing too{expired_note}"
                    ),
                    format!(
                        "Give the device {label}'s CA certificate as its trust bundle (for \
                         Azure: a bundle holding {G2} instead of {BALTIMORE})."
                    ),
                )
            } else {
                Check::problem(
                    ID,
                    TITLE,
                    Cause::UntrustedServer,
                    format!(
                        "{size} ({}), and not {label}'s CA {wanted}{expired_note}",
                        held_names(bundle)
                    ),
                    format!("Add {label}'s CA certificate to the device's trust bundle."),
                )
            }
        }
    }
}

fn expired_warning(evidence: String) -> Check {
    Check::warning(
        ID,
        TITLE,
        None,
        evidence,
        "Remove the expired certificates from the bundle: they no longer vouch for any server.",
    )
}

fn held_names(bundle: &TrustBundle) -> String {
    if bundle.certificates.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = bundle.certificates.iter().map(describe).collect();
    name_some(&names)
}

fn name_some(names: &[String]) -> String {
    let shown = names[..names.len().min(NAMED_AT_MOST)].join(", ");
    if names.len() > NAMED_AT_MOST {
        format!("{shown} and {} more", names.len() - NAMED_AT_MOST)
    } else {
        shown
    }
}

fn short_fingerprint(sha256: &str) -> &str {
    &sha256[..sha256.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::{Verdict, causes};
    use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

    const G2_PEM: &str = include_str!("../../tests/data/azure-roots/DigiCert_Global_Root_G2.pem");
    const BALTIMORE_PEM: &str =
        include_str!("../../tests/data/azure-roots/Baltimore_CyberTrust_Root.pem");
    const MS_RSA_PEM: &str = include_str!(
        "../../tests/data/azure-roots/Microsoft_RSA_Root_Certificate_Authority_2017.pem"
    );
    const MS_ECC_PEM: &str = include_str!(
        "../../tests/data/azure-roots/Microsoft_ECC_Root_Certificate_Authority_2017.pem"
    );

    fn bundle(pems: &[&str]) -> TrustBundle {
        TrustBundle::from_pem("the bundle", pems.concat().as_bytes()).unwrap()
    }

    fn now() -> i64 {
        crate::clock::now()
    }

    fn local_ca(name: &str, validity: Validity) -> Certificate {
        let options = CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity,
            path_length: None,
            organization: None,
        };
        CertificateAuthority::create_root(name, &options)
            .unwrap()
            .credential()
            .certificate()
            .clone()
    }

    fn local(anchor: &Certificate) -> ServerRoots {
        ServerRoots::Custom {
            label: "the local cloud".into(),
            anchors: vec![anchor.clone()],
        }
    }

    #[test]
    fn the_fingerprints_name_the_public_roots() {
        for (pem, sha256, cn) in [
            (G2_PEM, DIGICERT_GLOBAL_ROOT_G2_SHA256, G2),
            (BALTIMORE_PEM, BALTIMORE_CYBERTRUST_ROOT_SHA256, BALTIMORE),
            (MS_RSA_PEM, MICROSOFT_RSA_ROOT_2017_SHA256, MS_RSA),
            (MS_ECC_PEM, MICROSOFT_ECC_ROOT_2017_SHA256, MS_ECC),
        ] {
            let info = Certificate::from_pem(pem.as_bytes())
                .unwrap()
                .info()
                .clone();
            assert_eq!(info.thumbprint_sha256, sha256);
            assert_eq!(info.common_name.as_deref(), Some(cn));
        }
    }

    #[test]
    fn g2_with_a_microsoft_root_is_ok_and_g2_alone_a_warning_without_cause() {
        for pems in [[G2_PEM, MS_RSA_PEM], [MS_ECC_PEM, G2_PEM]] {
            let checked = check(Some(&bundle(&pems)), &ServerRoots::Azure, now());
            assert_eq!(checked.verdict, Verdict::Ok, "{checked:?}");
            assert_eq!(checked.id, "server.trust");
            assert!(checked.evidence.contains(G2), "{}", checked.evidence);
        }
        let alone = check(Some(&bundle(&[G2_PEM])), &ServerRoots::Azure, now());
        assert_eq!(alone.verdict, Verdict::Warning, "{alone:?}");
        assert_eq!(alone.cause, None);
        assert!(alone.evidence.contains(&format!("{MS_RSA}: absent")));
        assert!(causes(&[alone]).is_empty());
    }

    #[test]
    fn baltimore_without_g2_is_a_stale_bundle() {
        let stale = check(
            Some(&bundle(&[BALTIMORE_PEM, MS_RSA_PEM])),
            &ServerRoots::Azure,
            now(),
        );
        assert_eq!(
            causes(std::slice::from_ref(&stale)),
            [Cause::StaleTrustBundle]
        );
        assert!(stale.evidence.contains("2025-05-12"), "{}", stale.evidence);
        // Baltimore next to G2 is harmless: a warning that it expired, no cause.
        let both = check(
            Some(&bundle(&[BALTIMORE_PEM, G2_PEM, MS_ECC_PEM])),
            &ServerRoots::Azure,
            now(),
        );
        assert_eq!(both.verdict, Verdict::Warning, "{both:?}");
        assert_eq!(both.cause, None);
        assert!(both.evidence.contains("expired in the bundle"));
        // Before Baltimore expired, the same bundle was fine.
        let in_2024 = check(
            Some(&bundle(&[BALTIMORE_PEM, G2_PEM, MS_ECC_PEM])),
            &ServerRoots::Azure,
            1_704_067_200,
        );
        assert_eq!(in_2024.verdict, Verdict::Ok, "{in_2024:?}");
    }

    #[test]
    fn a_bundle_without_the_servers_root_is_untrusted() {
        let empty = TrustBundle {
            source: "the bundle".into(),
            certificates: Vec::new(),
        };
        let other = bundle(&[MS_RSA_PEM, MS_ECC_PEM]);
        for b in [&empty, &other] {
            let checked = check(Some(b), &ServerRoots::Azure, now());
            assert_eq!(causes(&[checked]), [Cause::UntrustedServer]);
        }
        let anchor = local_ca("Local Cloud CA", Validity::days(30, None).unwrap());
        let azure_only = check(Some(&bundle(&[G2_PEM])), &local(&anchor), now());
        assert_eq!(causes(&[azure_only]), [Cause::UntrustedServer]);
    }

    #[test]
    fn the_local_clouds_anchor_is_trusted_and_baltimore_alone_is_stale_there_too() {
        let anchor = local_ca("Local Cloud CA", Validity::days(30, None).unwrap());
        let held = bundle(&[G2_PEM, &anchor.pem()]);
        let checked = check(Some(&held), &local(&anchor), now());
        assert_eq!(checked.verdict, Verdict::Ok, "{checked:?}");
        assert!(checked.evidence.contains("'Local Cloud CA'"));
        // The same root is not trusted by another cloud with a CA of the same name.
        let impostor = local_ca("Local Cloud CA", Validity::days(30, None).unwrap());
        let checked = check(Some(&held), &local(&impostor), now());
        assert_eq!(causes(&[checked]), [Cause::UntrustedServer]);
        let stale = check(Some(&bundle(&[BALTIMORE_PEM])), &local(&anchor), now());
        assert_eq!(
            causes(std::slice::from_ref(&stale)),
            [Cause::StaleTrustBundle]
        );
        assert!(
            stale
                .evidence
                .contains("the local cloud's CA 'Local Cloud CA'"),
            "{}",
            stale.evidence
        );
    }

    #[test]
    fn an_expired_anchor_is_a_warning() {
        let day = 86_400;
        let old = local_ca("Old CA", Validity::days(1, Some(now() - 10 * day)).unwrap());
        let checked = check(Some(&bundle(&[&old.pem()])), &local(&old), now());
        assert_eq!(checked.verdict, Verdict::Warning, "{checked:?}");
        assert!(checked.evidence.contains("'Old CA' (expired"));
    }

    #[test]
    fn no_bundle_is_skipped_and_an_unreadable_one_is_reported() {
        let skipped = check(None, &ServerRoots::Azure, now());
        assert_eq!(skipped.verdict, Verdict::Skipped);
        for garbage in [
            &b"not a certificate"[..],
            b"",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let refused = TrustBundle::from_pem("bundle.pem", garbage).unwrap_err();
            assert_eq!(refused.id, "server.trust");
            assert_eq!(causes(std::slice::from_ref(&refused)), [Cause::Unreadable]);
            assert!(
                refused.evidence.starts_with("bundle.pem: "),
                "{}",
                refused.evidence
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = TrustBundle::load(dir.path().join("absent.pem")).unwrap_err();
        assert_eq!(causes(&[missing]), [Cause::Unreadable]);
        let path = dir.path().join("roots.pem");
        std::fs::write(&path, [G2_PEM, MS_RSA_PEM].concat()).unwrap();
        let loaded = TrustBundle::load(&path).unwrap();
        assert_eq!(loaded.certificates.len(), 2);
        assert_eq!(loaded.source, path.display().to_string());
    }
}
