//! The device's credential as the device holds it: its certificates in the order the device
//! would send them, and its key if given. Loading never refuses: what does not parse becomes
//! the `files.parse` problem, so the other checks still say what they can.

use std::path::{Path, PathBuf};

use super::{Cause, Check};
use crate::pki::{Certificate, Credential, PrivateKey};

/// Check id and title of the loading step.
pub const PARSE_ID: &str = "files.parse";
const PARSE_TITLE: &str = "The files parse";

/// Where the credential came from: it decides how a missing chain is named (a PKCS#12 that
/// holds no intermediates is its own classic cause) and what the evidence cites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// A certificate file (optionally followed by its chain), a chain file, a key file.
    Files {
        /// The certificate file.
        certificate: PathBuf,
        /// A separate chain file, when the device has one.
        chain: Option<PathBuf>,
        /// The key file, when given.
        key: Option<PathBuf>,
    },
    /// A PKCS#12 (PFX) file.
    Pkcs12 {
        /// The file.
        path: PathBuf,
    },
    /// A credential already in memory (a `DeviceCertificate`).
    InMemory,
}

impl CredentialSource {
    /// Whether the credential is a PKCS#12 file.
    pub fn is_pkcs12(&self) -> bool {
        matches!(self, CredentialSource::Pkcs12 { .. })
    }

    /// The files named, for evidence.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Files {
                certificate,
                chain,
                key,
            } => [Some(certificate), chain.as_ref(), key.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            CredentialSource::Pkcs12 { path } => path.display().to_string(),
            CredentialSource::InMemory => "the DeviceCertificate".into(),
        }
    }
}

/// What the device holds.
#[derive(Debug)]
pub struct HeldCredential {
    /// Where it came from.
    pub source: CredentialSource,
    /// Every certificate, in the order the device would send them: the certificate file's,
    /// then the chain file's. A PKCS#12 file's are ordered as TLS stacks order them on import
    /// (the key's certificate, then its issuers nearest first).
    pub certificates: Vec<Certificate>,
    /// The private key, when given and readable.
    pub key: Option<PrivateKey>,
}

/// A credential loaded for diagnosis: what could be read, and the `files.parse` check.
#[derive(Debug)]
pub struct Loaded {
    /// `None` when not one certificate could be read.
    pub credential: Option<HeldCredential>,
    /// The outcome of reading the files.
    pub check: Check,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn unreadable(evidence: String, fix: &str) -> Check {
    Check::problem(PARSE_ID, PARSE_TITLE, Cause::Unreadable, evidence, fix)
}

/// Reads a certificate file (optionally followed by its chain), a separate chain file and a
/// key file (`key_password` for an encrypted key).
pub fn load_files(
    certificate: &Path,
    chain: Option<&Path>,
    key: Option<&Path>,
    key_password: Option<&[u8]>,
) -> Loaded {
    let source = CredentialSource::Files {
        certificate: certificate.to_path_buf(),
        chain: chain.map(Path::to_path_buf),
        key: key.map(Path::to_path_buf),
    };
    let mut failures = Vec::new();
    let mut certificates = Vec::new();
    for path in std::iter::once(certificate).chain(chain) {
        match read(path).and_then(|data| {
            Certificate::all_from_bytes(&data).map_err(|e| format!("{}: {e}", path.display()))
        }) {
            Ok(mut found) => certificates.append(&mut found),
            Err(e) => failures.push(e),
        }
    }
    let key = key.and_then(|path| {
        match read(path).and_then(|data| {
            PrivateKey::from_bytes(&data, key_password)
                .map_err(|e| format!("{}: {e}", path.display()))
        }) {
            Ok(k) => Some(k),
            Err(e) => {
                failures.push(e);
                None
            }
        }
    });
    finish(source, certificates, key, failures)
}

/// Reads a PKCS#12 file with its password.
pub fn load_pkcs12(path: &Path, password: &str) -> Loaded {
    let source = CredentialSource::Pkcs12 {
        path: path.to_path_buf(),
    };
    match read(path).and_then(|data| {
        crate::pki::from_pkcs12(&data, password).map_err(|e| format!("{}: {e}", path.display()))
    }) {
        Ok(credential) => held_in(source, &credential),
        Err(e) => finish(source, Vec::new(), None, vec![e]),
    }
}

/// A credential already loaded (a `DeviceCertificate`): leaf, then its issuers as held.
pub fn from_credential(credential: &Credential) -> Loaded {
    held_in(CredentialSource::InMemory, credential)
}

fn held_in(source: CredentialSource, credential: &Credential) -> Loaded {
    let certificates = std::iter::once(credential.certificate().clone())
        .chain(credential.issuers().iter().cloned())
        .collect();
    match credential.key().try_clone() {
        Ok(key) => finish(source, certificates, Some(key), Vec::new()),
        Err(e) => finish(source, certificates, None, vec![e.to_string()]),
    }
}

fn finish(
    source: CredentialSource,
    certificates: Vec<Certificate>,
    key: Option<PrivateKey>,
    failures: Vec<String>,
) -> Loaded {
    let check = if !failures.is_empty() {
        unreadable(
            failures.join("; "),
            "Give the files in PEM or DER as OpenSSL writes them (and the right password).",
        )
    } else if certificates.is_empty() {
        unreadable(
            format!("no certificate in {}", source.describe()),
            "Point the doctor at the device's certificate file.",
        )
    } else {
        let key_note = match &key {
            Some(k) => format!(" and a {} key", k.algorithm()),
            None => " (no key given: the key check is skipped)".into(),
        };
        Check::ok(
            PARSE_ID,
            PARSE_TITLE,
            format!(
                "{} certificate(s){key_note} read from {}",
                certificates.len(),
                source.describe()
            ),
        )
    };
    Loaded {
        credential: (!certificates.is_empty()).then_some(HeldCredential {
            source,
            certificates,
            key,
        }),
        check,
    }
}
