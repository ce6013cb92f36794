//! Parsed certificates: loading from PEM/DER and inspection (names, serial, thumbprints as
//! Azure shows them, validity, constraints, key algorithm, extensions).

use std::fmt;
use std::sync::{Arc, OnceLock};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{Error, Result};
use crate::pki::keys::{looks_like_pem, pem_encode};

/// An X.509 certificate: its DER bytes, known to parse, and a summary computed on first use.
#[derive(Clone)]
pub struct Certificate {
    inner: Arc<Inner>,
}

struct Inner {
    der: Vec<u8>,
    info: OnceLock<CertificateInfo>,
}

/// Everything users inspect about a certificate, in owned form.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateInfo {
    /// Subject as `CN=..., O=...`.
    pub subject: String,
    /// Issuer as `CN=..., O=...`.
    pub issuer: String,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The issuer's common name, if any.
    pub issuer_common_name: Option<String>,
    /// Serial number, upper-case hex without leading zero bytes.
    pub serial_number: String,
    /// SHA-1 of the DER, upper-case hex (Azure's "thumbprint").
    pub thumbprint_sha1: String,
    /// SHA-256 of the DER, upper-case hex.
    pub thumbprint_sha256: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// The pathLenConstraint, if any.
    pub path_length: Option<u32>,
    /// Key algorithm in dpskit's names (`ec-p256`, `rsa-2048`, ...).
    pub key_algorithm: String,
    /// Signature algorithm name (`ecdsa-with-SHA256`, `sha256WithRSAEncryption`, ...).
    pub signature_algorithm: String,
    /// keyUsage bits by RFC 5280 name.
    pub key_usage: Vec<String>,
    /// extendedKeyUsage purposes by name (or dotted OID).
    pub extended_key_usage: Vec<String>,
    /// subjectKeyIdentifier, upper-case hex.
    pub subject_key_identifier: Option<String>,
    /// authorityKeyIdentifier's keyIdentifier, upper-case hex.
    pub authority_key_identifier: Option<String>,
    /// Subject equals issuer and the certificate's own key verifies its signature.
    pub is_self_signed: bool,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        f.debug_struct("Certificate")
            .field("subject", &info.subject)
            .field("thumbprint_sha1", &info.thumbprint_sha1)
            .finish()
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der() == other.der()
    }
}

impl Eq for Certificate {}

impl Certificate {
    /// Parses one DER certificate; trailing bytes are an error.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        match X509Certificate::from_der(der) {
            Ok(([], _)) => Ok(Certificate {
                inner: Arc::new(Inner {
                    der: der.to_vec(),
                    info: OnceLock::new(),
                }),
            }),
            Ok(_) => Err(Error::cert(
                "malformed certificate: extra bytes after the DER certificate",
            )),
            Err(e) => Err(Error::cert_caused("malformed certificate", e)),
        }
    }

    /// Wraps DER that rcgen just produced: it is well-formed by construction, so bulk issuance
    /// skips a parse per certificate (about a tenth of the cost of issuing one).
    pub(crate) fn from_issued_der(der: Vec<u8>) -> Self {
        debug_assert!(X509Certificate::from_der(&der).is_ok());
        Certificate {
            inner: Arc::new(Inner {
                der,
                info: OnceLock::new(),
            }),
        }
    }

    /// Parses every `CERTIFICATE` block of PEM text, in order. Other blocks (keys, CSRs) are
    /// skipped; no certificate at all is an error.
    pub fn chain_from_pem(data: &[u8]) -> Result<Vec<Self>> {
        let blocks = pem::parse_many(data).map_err(|e| Error::cert_caused("malformed PEM", e))?;
        let certs = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE" || b.tag() == "X509 CERTIFICATE")
            .map(|b| Certificate::from_der(b.contents()))
            .collect::<Result<Vec<_>>>()?;
        if certs.is_empty() {
            let found: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
            return Err(if found.is_empty() {
                Error::cert("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
            } else {
                Error::cert(format!(
                    "no certificate in the PEM data (found: {})",
                    found.join(", ")
                ))
            });
        }
        Ok(certs)
    }

    /// Parses the first certificate of PEM text.
    pub fn from_pem(data: &[u8]) -> Result<Self> {
        Ok(Self::chain_from_pem(data)?.remove(0))
    }

    /// Parses PEM (all certificates) or a single DER certificate.
    pub fn all_from_bytes(data: &[u8]) -> Result<Vec<Self>> {
        if looks_like_pem(data) {
            Self::chain_from_pem(data)
        } else if data.is_empty() {
            Err(Error::cert("the certificate data is empty"))
        } else {
            Ok(vec![Self::from_der(data)?])
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.inner.der
    }

    /// The PEM encoding (`CERTIFICATE`).
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", self.der())
    }

    /// Borrows the parsed form. Construction guaranteed that parsing succeeds.
    pub(crate) fn parsed(&self) -> X509Certificate<'_> {
        match X509Certificate::from_der(self.der()) {
            Ok((_, x)) => x,
            // Unreachable: every constructor parsed the same bytes successfully.
            Err(e) => unreachable!("certificate parsed at construction failed to parse: {e}"),
        }
    }

    /// The summary of the certificate.
    pub fn info(&self) -> &CertificateInfo {
        self.inner.info.get_or_init(|| summarise(self))
    }

    /// Whether the raw subject of `self` equals the raw issuer of `child` (names compared
    /// byte for byte, then by their string form, which tolerates re-encoded string types).
    pub(crate) fn is_issuer_name_of(&self, child: &Certificate) -> bool {
        let me = self.parsed();
        let child = child.parsed();
        me.subject().as_raw() == child.issuer().as_raw()
            || me
                .subject()
                .to_string()
                .eq_ignore_ascii_case(&child.issuer().to_string())
    }

    /// Whether `issuer`'s public key verifies this certificate's signature.
    pub(crate) fn is_signed_by(&self, issuer: &Certificate) -> bool {
        let issuer = issuer.parsed();
        self.parsed()
            .verify_signature(Some(issuer.public_key()))
            .is_ok()
    }
}

fn summarise(cert: &Certificate) -> CertificateInfo {
    let x = cert.parsed();
    let (is_ca, path_length) = match x.basic_constraints() {
        Ok(Some(bc)) => (bc.value.ca, bc.value.path_len_constraint),
        _ => (false, None),
    };
    let mut key_usage = Vec::new();
    if let Ok(Some(ku)) = x.key_usage() {
        let ku = ku.value;
        let bits = [
            (ku.digital_signature(), "digitalSignature"),
            (ku.non_repudiation(), "nonRepudiation"),
            (ku.key_encipherment(), "keyEncipherment"),
            (ku.data_encipherment(), "dataEncipherment"),
            (ku.key_agreement(), "keyAgreement"),
            (ku.key_cert_sign(), "keyCertSign"),
            (ku.crl_sign(), "cRLSign"),
            (ku.encipher_only(), "encipherOnly"),
            (ku.decipher_only(), "decipherOnly"),
        ];
        key_usage = bits
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string())
            .collect();
    }
    let mut extended_key_usage = Vec::new();
    if let Ok(Some(eku)) = x.extended_key_usage() {
        let eku = eku.value;
        let purposes = [
            (eku.any, "anyExtendedKeyUsage"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ];
        extended_key_usage = purposes
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string())
            .collect();
        extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }
    let mut subject_key_identifier = None;
    let mut authority_key_identifier = None;
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ki) => {
                subject_key_identifier = Some(hex_upper(ki.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_identifier = aki.key_identifier.as_ref().map(|ki| hex_upper(ki.0));
            }
            _ => {}
        }
    }
    let serial = x.raw_serial();
    let serial = match serial.iter().position(|b| *b != 0) {
        Some(first) => &serial[first..],
        None => &serial[serial.len().saturating_sub(1)..],
    };
    let is_self_signed =
        x.subject().as_raw() == x.issuer().as_raw() && x.verify_signature(None).is_ok();
    CertificateInfo {
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        common_name: first_common_name(x.subject()),
        issuer_common_name: first_common_name(x.issuer()),
        serial_number: hex_upper(serial),
        thumbprint_sha1: hex_upper(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der()).as_ref(),
        ),
        thumbprint_sha256: hex_upper(
            ring::digest::digest(&ring::digest::SHA256, cert.der()).as_ref(),
        ),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        is_ca,
        path_length,
        key_algorithm: key_algorithm_name(x.public_key()),
        signature_algorithm: signature_algorithm_name(
            &x.signature_algorithm.algorithm.to_id_string(),
        ),
        key_usage,
        extended_key_usage,
        subject_key_identifier,
        authority_key_identifier,
        is_self_signed,
    }
}

fn first_common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Names a public key the way dpskit names algorithms; unknown keys get their OID.
pub(crate) fn key_algorithm_name(spki: &SubjectPublicKeyInfo<'_>) -> String {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("rsa-{}", rsa.key_size()),
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ec-p256".to_string(),
                Some("1.3.132.0.34") => "ec-p384".to_string(),
                Some("1.3.132.0.35") => "ec-p521".to_string(),
                Some(other) => format!("ec-{other}"),
                None => "ec".to_string(),
            }
        }
        _ => match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "ed25519".to_string(),
            other => other.to_string(),
        },
    }
}

/// Bit length of the RSA modulus in a DER SubjectPublicKeyInfo, if it is an RSA key.
pub(crate) fn rsa_modulus_bits(spki_der: &[u8]) -> Option<usize> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => Some(rsa.key_size()),
        _ => None,
    }
}

fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.3.101.112" => "ed25519",
        other => other,
    }
    .to_string()
}

/// Upper-case hex without separators, as Azure shows thumbprints.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}
