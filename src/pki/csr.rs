//! Certificate signing requests (PKCS#10): made for a device key with CN = its registration
//! id, and read back with their signature checked, their CN and their key's algorithm, as a
//! certificate authority judges one before it issues (DPS at registration, IoT Hub at
//! renewal).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{CertificateParams, DistinguishedName, DnType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::{Error, Result};
use crate::pki::keys::{KeyAlgorithm, PrivateKey};

/// A PKCS#10 request whose signature verified with its own key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    der: Vec<u8>,
    common_name: Option<String>,
    algorithm: Option<KeyAlgorithm>,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("common_name", &self.common_name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// A request for `key` with the subject `CN=common_name` (a device's registration id),
    /// signed with `key`.
    pub fn generate(common_name: &str, key: &PrivateKey) -> Result<Self> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        params.distinguished_name = subject;
        let request = params.serialize_request(key.key_pair()).map_err(|e| {
            Error::cert_caused("building the certificate signing request failed", e)
        })?;
        Self::from_der(request.der())
    }

    /// Reads a DER request and checks its signature with the key it carries.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, request) = X509CertificationRequest::from_der(der)
            .map_err(|e| Error::cert_caused("the CSR is not a DER PKCS#10 request", e))?;
        if !rest.is_empty() {
            return Err(Error::cert("the CSR has bytes after its DER structure"));
        }
        request
            .verify_signature()
            .map_err(|_| Error::cert("the CSR's signature does not verify with its own key"))?;
        let info = &request.certification_request_info;
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let spki = &info.subject_pki;
        let algorithm = match spki.parsed() {
            Ok(PublicKey::EC(_)) if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                match curve {
                    Some(c) if c == OID_EC_P256 => Some(KeyAlgorithm::EcP256),
                    Some(c) if c == OID_NIST_EC_P384 => Some(KeyAlgorithm::EcP384),
                    _ => None,
                }
            }
            Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
                2048 => Some(KeyAlgorithm::Rsa2048),
                3072 => Some(KeyAlgorithm::Rsa3072),
                4096 => Some(KeyAlgorithm::Rsa4096),
                _ => None,
            },
            _ => None,
        };
        Ok(CertificateRequest {
            der: der.to_vec(),
            common_name,
            algorithm,
            public_key_der: spki.raw.to_vec(),
        })
    }

    /// Reads the wire form: base64 of the DER (no PEM armour, no line breaks).
    pub fn from_base64(text: &str) -> Result<Self> {
        let der = BASE64
            .decode(text.as_bytes())
            .map_err(|e| Error::cert_caused("the CSR is not base64", e))?;
        Self::from_der(&der)
    }

    /// Reads a PEM request (`-----BEGIN CERTIFICATE REQUEST-----`) or DER bytes.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self> {
        if crate::pki::keys::looks_like_pem(bytes) {
            let blocks =
                pem::parse_many(bytes).map_err(|e| Error::cert_caused("malformed PEM CSR", e))?;
            let block = blocks
                .into_iter()
                .find(|b| b.tag().contains("CERTIFICATE REQUEST"))
                .ok_or_else(|| Error::cert("no CERTIFICATE REQUEST block in the CSR PEM"))?;
            Self::from_der(block.contents())
        } else {
            Self::from_der(bytes)
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The wire form: base64 of the DER.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.der)
    }

    /// PEM, as OpenSSL writes a request.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", self.der.clone()))
    }

    /// The subject's CN, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The key's algorithm, if it is one dpskit knows (EC P-256/P-384, RSA 2048/3072/4096).
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.algorithm
    }

    /// The subject public key info (DER), which the issued certificate certifies.
    pub(crate) fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_request_reads_back_with_its_cn_and_algorithm() {
        for algorithm in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = PrivateKey::generate(algorithm).unwrap();
            let request = CertificateRequest::generate("dev-1", &key).unwrap();
            assert_eq!(request.common_name(), Some("dev-1"));
            assert_eq!(request.algorithm(), Some(algorithm));
            let again = CertificateRequest::from_base64(&request.to_base64()).unwrap();
            assert_eq!(again, request);
            let from_pem =
                CertificateRequest::from_pem_or_der(request.to_pem().as_bytes()).unwrap();
            assert_eq!(from_pem, request);
        }
    }

    #[test]
    fn a_tampered_or_truncated_request_is_refused() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let der = CertificateRequest::generate("dev-1", &key)
            .unwrap()
            .der()
            .to_vec();
        // Flip a byte of the CN: the signature no longer covers what is there.
        let at = der.windows(5).position(|w| w == b"dev-1").unwrap();
        let mut tampered = der.clone();
        tampered[at] = b'x';
        let err = CertificateRequest::from_der(&tampered).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        assert!(CertificateRequest::from_der(&der[..der.len() - 3]).is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(CertificateRequest::from_der(&trailing).is_err());
        assert!(CertificateRequest::from_base64("not base64!").is_err());
    }
}
