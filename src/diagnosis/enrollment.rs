//! Which enrollment DPS admits an X.509 device with, written once: the emulator decides with
//! these rules, and `dpskit doctor` predicts with them what Azure (or the emulator) will
//! decide. An individual enrollment for the registration id beats every group; otherwise DPS
//! walks up the chain the device sent, from the leaf, and the first group whose certificate
//! is the current certificate (above the leaf) or its issuer wins; that group's certificate
//! counts only if it is a verified uploaded CA or chains (through the presented certificates
//! and the uploaded CAs) to one.

use crate::pki::{Certificate, verify_chain};

/// A certificate an enrollment names, as far as it is known: the certificate itself, or
/// (what Azure's service API answers for a group's inline certificate) only its description.
pub trait EnrolledCertificate {
    /// Whether this is `certificate` itself.
    fn is(&self, certificate: &Certificate) -> bool;
    /// Whether this issued `certificate`.
    fn issued(&self, certificate: &Certificate) -> bool;
}

impl EnrolledCertificate for Certificate {
    fn is(&self, certificate: &Certificate) -> bool {
        self == certificate
    }

    /// Name and signature both: a CA that merely shares the name does not count.
    fn issued(&self, certificate: &Certificate) -> bool {
        self.is_issuer_name_of(certificate) && certificate.is_signed_by(self)
    }
}

/// The walk up a presented chain in search of a group.
#[derive(Debug, Clone)]
pub struct Walk {
    /// The group met first (its index in the groups given) and which of its certificates
    /// matched (index in that group's certificates).
    pub pick: Option<(usize, usize)>,
    /// The certificates walked, from the leaf to where the walk stopped (the pick's level, or
    /// the highest certificate whose issuer the chain does not hold).
    pub path: Vec<Certificate>,
}

/// Walks up `chain` (leaf first, as presented) and returns the first group (of `groups`,
/// each the certificates that group names, in the order DPS lists the groups) whose
/// certificate is the current certificate above the leaf, or the current certificate's issuer.
pub fn pick_group<C: EnrolledCertificate>(chain: &[Certificate], groups: &[&[C]]) -> Walk {
    let Some(leaf) = chain.first() else {
        return Walk {
            pick: None,
            path: Vec::new(),
        };
    };
    let mut path = vec![leaf.clone()];
    for _ in 0..chain.len() + 1 {
        let Some(current) = path.last().cloned() else {
            break;
        };
        let above_leaf = path.len() > 1;
        let found = groups.iter().enumerate().find_map(|(g, certificates)| {
            certificates
                .iter()
                .position(|c| c.is(&current) && above_leaf || c.issued(&current))
                .map(|i| (g, i))
        });
        if found.is_some() {
            return Walk { pick: found, path };
        }
        match chain[1..]
            .iter()
            .find(|c| !path.contains(c) && c.is_issuer_name_of(&current) && current.is_signed_by(c))
        {
            Some(issuer) => path.push(issuer.clone()),
            None => break,
        }
    }
    Walk { pick: None, path }
}

/// Whether an individual enrollment naming `enrolled` accepts the presented `chain` at `at`:
/// one of them is the leaf, or is presented above it and the leaf chains to it.
pub fn individual_accepts(chain: &[Certificate], enrolled: &[Certificate], at: i64) -> bool {
    let Some(leaf) = chain.first() else {
        return false;
    };
    enrolled.iter().any(|c| {
        c == leaf
            || chain[1..].contains(c)
                && verify_chain(leaf, &chain[1..], std::slice::from_ref(c), at).is_ok()
    })
}

/// How far DPS trusts a group's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum CaTrust {
    /// It is an uploaded CA, verified.
    Verified,
    /// It chains (through the presented certificates and the uploaded CAs) to this verified
    /// uploaded CA.
    ChainsToVerified(Certificate),
    /// It is an uploaded CA that is not verified (and chains to no verified one).
    UploadedUnverified,
    /// It is not uploaded and chains to no verified uploaded CA.
    Untrusted,
}

impl CaTrust {
    /// Whether DPS accepts devices under it.
    pub fn is_trusted(&self) -> bool {
        matches!(self, CaTrust::Verified | CaTrust::ChainsToVerified(_))
    }
}

/// Whether a group's certificate counts: a verified uploaded CA, or chaining up (through the
/// presented `chain` and the `uploaded` CAs, each with whether it is verified) to one at `at`.
pub fn group_certificate_trust(
    group_certificate: &Certificate,
    chain: &[Certificate],
    uploaded: &[(bool, Certificate)],
    at: i64,
) -> CaTrust {
    let verified: Vec<Certificate> = uploaded
        .iter()
        .filter(|(v, _)| *v)
        .map(|(_, c)| c.clone())
        .collect();
    if verified.contains(group_certificate) {
        return CaTrust::Verified;
    }
    let pool: Vec<Certificate> = chain
        .iter()
        .cloned()
        .chain(uploaded.iter().map(|(_, c)| c.clone()))
        .collect();
    if !verified.is_empty()
        && let Ok(path) = verify_chain(group_certificate, &pool, &verified, at)
        && let Some(anchor) = path.last()
    {
        return CaTrust::ChainsToVerified(anchor.clone());
    }
    if uploaded.iter().any(|(v, c)| !v && c == group_certificate) {
        CaTrust::UploadedUnverified
    } else {
        CaTrust::Untrusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

    fn hierarchy() -> (CertificateAuthority, CertificateAuthority, Vec<Certificate>) {
        let options = |path_length| CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(30, None).unwrap(),
            path_length,
            organization: None,
        };
        let root = CertificateAuthority::create_root("Walk Root", &options(None)).unwrap();
        let inter = root
            .create_intermediate("Walk Intermediate", &options(Some(0)))
            .unwrap();
        let device = inter
            .issue_device(
                "walker",
                KeyAlgorithm::EcP256,
                Validity::days(5, None).unwrap(),
            )
            .unwrap();
        let chain = vec![
            device.credential().certificate().clone(),
            inter.credential().certificate().clone(),
        ];
        (root, inter, chain)
    }

    #[test]
    fn the_first_group_met_walking_up_wins_and_the_path_says_where_the_walk_stopped() {
        let (root, inter, chain) = hierarchy();
        let root_cert = root.credential().certificate().clone();
        let inter_cert = inter.credential().certificate().clone();
        let on_root = [root_cert.clone()];
        let on_inter = [inter_cert.clone()];
        // The group on the intermediate is met first although it is listed second.
        let walk = pick_group(&chain, &[&on_root[..], &on_inter[..]]);
        assert_eq!(walk.pick, Some((1, 0)));
        assert_eq!(walk.path.len(), 1);
        // Only the root named: met as the intermediate's issuer, one level up.
        let walk = pick_group(&chain, &[&on_root[..]]);
        assert_eq!(walk.pick, Some((0, 0)));
        assert_eq!(walk.path, chain);
        // The leaf alone never reaches a group on the root.
        let walk = pick_group(&chain[..1], &[&on_root[..]]);
        assert_eq!(walk.pick, None);
        assert_eq!(walk.path, chain[..1].to_vec());
    }

    #[test]
    fn a_group_ca_counts_when_verified_or_chaining_to_a_verified_upload() {
        let (root, inter, chain) = hierarchy();
        let root_cert = root.credential().certificate().clone();
        let inter_cert = inter.credential().certificate().clone();
        let at = crate::clock::now();
        assert_eq!(
            group_certificate_trust(&root_cert, &chain, &[(true, root_cert.clone())], at),
            CaTrust::Verified
        );
        assert_eq!(
            group_certificate_trust(&inter_cert, &chain, &[(true, root_cert.clone())], at),
            CaTrust::ChainsToVerified(root_cert.clone())
        );
        assert_eq!(
            group_certificate_trust(&root_cert, &chain, &[(false, root_cert.clone())], at),
            CaTrust::UploadedUnverified
        );
        assert_eq!(
            group_certificate_trust(&inter_cert, &chain, &[], at),
            CaTrust::Untrusted
        );
        assert!(individual_accepts(&chain, &chain[..1], at));
        assert!(individual_accepts(
            &chain,
            std::slice::from_ref(&inter_cert),
            at
        ));
        assert!(!individual_accepts(&chain, &[root_cert], at));
    }
}
