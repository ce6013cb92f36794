//! Private keys: generation for every supported algorithm, loading from every format OpenSSL
//! writes (PKCS#8, encrypted PKCS#8, PKCS#1, SEC1, legacy `Proc-Type: 4,ENCRYPTED` PEM), and
//! PKCS#8 output, plain or encrypted.
//!
//! Everything is normalised to PKCS#8 because ring (our single crypto provider, via rcgen) only
//! reads PKCS#8.

use std::fmt;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};

use crate::error::{Error, Result};
use crate::random::fill_random;

/// Key algorithms dpskit can generate, named as users type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256 (the default: fast and accepted by Azure).
    EcP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcP384,
    /// RSA with a 2048-bit modulus, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus (what `certGen.sh` uses).
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, in the order they are documented.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The user-facing name, e.g. `ec-p256`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::EcP384 => "ec-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Parses a user-facing name; case-insensitive, `_` accepted for `-`.
    pub fn parse(name: &str) -> Result<Self> {
        let normalised = name.trim().to_ascii_lowercase().replace('_', "-");
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == normalised || a.name().replace('-', "") == normalised)
            .ok_or_else(|| {
                let known: Vec<&str> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
                Error::cert(format!(
                    "unknown key algorithm {name:?}; use one of {}",
                    known.join(", ")
                ))
            })
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A private key usable for signing, with the algorithm it belongs to.
pub struct PrivateKey {
    key_pair: KeyPair,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        let key_pair = match algorithm.rsa_bits() {
            None => {
                let alg = if algorithm == KeyAlgorithm::EcP256 {
                    &PKCS_ECDSA_P256_SHA256
                } else {
                    &PKCS_ECDSA_P384_SHA384
                };
                KeyPair::generate_for(alg).map_err(|e| {
                    Error::cert_caused(format!("{algorithm} key generation failed"), e)
                })?
            }
            Some(bits) => {
                // ring signs with RSA keys but cannot generate them; the pure-Rust `rsa` crate
                // generates, ring takes over from PKCS#8.
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::PrivateKey::new(&mut RingRng, bits).map_err(|e| {
                    Error::cert_caused(format!("{algorithm} key generation failed"), e)
                })?;
                let der = key.to_pkcs8_der().map_err(|e| {
                    Error::cert_caused(format!("{algorithm} key encoding failed"), e)
                })?;
                KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                    .map_err(|e| Error::cert_caused(format!("{algorithm} key rejected"), e))?
            }
        };
        Ok(PrivateKey {
            key_pair,
            algorithm,
        })
    }

    /// Loads a key from PEM or DER in any format OpenSSL writes; `password` decrypts encrypted
    /// keys.
    pub fn from_bytes(data: &[u8], password: Option<&[u8]>) -> Result<Self> {
        let pkcs8 = if looks_like_pem(data) {
            pkcs8_from_pem(data, password)?
        } else {
            pkcs8_from_der(data, password)?
        };
        Self::from_pkcs8(&pkcs8)
    }

    /// Loads a PKCS#8 DER key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let key_pair = KeyPair::try_from(der).map_err(|_| {
            Error::cert(
                "unsupported or malformed private key: dpskit uses EC P-256/P-384 and RSA 2048-8192 keys",
            )
        })?;
        let algorithm = algorithm_of(&key_pair)?;
        Ok(PrivateKey {
            key_pair,
            algorithm,
        })
    }

    /// A second handle on the same key (ring's key pairs are not `Clone`): read again from
    /// its own PKCS#8, which parsed once already.
    pub fn try_clone(&self) -> Result<Self> {
        Self::from_pkcs8(self.pkcs8_der())
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The rcgen key pair, for signing.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The key as unencrypted PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.key_pair.serialized_der()
    }

    /// The key as unencrypted PKCS#8 PEM (`PRIVATE KEY`).
    pub fn pkcs8_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.pkcs8_der())
    }

    /// The key as encrypted PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`): PBES2 with PBKDF2-HMAC-SHA256
    /// and AES-256-CBC, which OpenSSL, .NET and pyca/cryptography all read.
    pub fn encrypted_pkcs8_pem(&self, password: &[u8]) -> Result<String> {
        Ok(pem_encode(
            "ENCRYPTED PRIVATE KEY",
            &encrypt_pkcs8(self.pkcs8_der(), password)?,
        ))
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn public_key_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.key_pair.subject_public_key_info()
    }
}

/// Number of PBKDF2 rounds for keys we encrypt: OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is
/// 600,000, which costs about a second in pure Rust on our machines; CA keys are encrypted once.
const PBKDF2_ROUNDS: u32 = 600_000;

fn encrypt_pkcs8(pkcs8: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    use pkcs8::der::Encode;
    use pkcs8::der::asn1::OctetStringRef;
    use pkcs8::pkcs5::pbes2;

    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    fill_random(&mut salt)?;
    fill_random(&mut iv)?;
    let params = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, iv)
        .map_err(|e| Error::cert_caused("key encryption failed", e))?;
    let ciphertext = params
        .encrypt(password, pkcs8)
        .map_err(|e| Error::cert_caused("key encryption failed", e))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef {
        encryption_algorithm: params.into(),
        encrypted_data: OctetStringRef::new(&ciphertext)
            .map_err(|e| Error::cert_caused("key encryption failed", e))?,
    };
    info.to_der()
        .map_err(|e| Error::cert_caused("key encryption failed", e))
}

fn decrypt_pkcs8(der: &[u8], password: Option<&[u8]>) -> Result<Vec<u8>> {
    let password = password.ok_or_else(|| {
        Error::cert("the private key is encrypted: a password is needed to load it")
    })?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der)
        .map_err(|e| Error::cert_caused("malformed encrypted private key", e))?;
    let plain = info.decrypt(password).map_err(|_| {
        Error::cert("cannot decrypt the private key: wrong password (or unsupported encryption)")
    })?;
    Ok(plain.as_bytes().to_vec())
}

/// Returns the algorithm of a loaded key pair.
fn algorithm_of(key_pair: &KeyPair) -> Result<KeyAlgorithm> {
    let alg = key_pair.algorithm();
    if alg == &PKCS_ECDSA_P256_SHA256 {
        return Ok(KeyAlgorithm::EcP256);
    }
    if alg == &PKCS_ECDSA_P384_SHA384 {
        return Ok(KeyAlgorithm::EcP384);
    }
    if alg == &PKCS_RSA_SHA256 {
        use rcgen::PublicKeyData;
        let bits = crate::pki::cert::rsa_modulus_bits(&key_pair.subject_public_key_info())
            .unwrap_or_default();
        return Ok(match bits {
            0..=2048 => KeyAlgorithm::Rsa2048,
            2049..=3072 => KeyAlgorithm::Rsa3072,
            _ => KeyAlgorithm::Rsa4096,
        });
    }
    Err(Error::cert(
        "unsupported key type: dpskit uses EC P-256/P-384 and RSA keys",
    ))
}

pub(crate) fn looks_like_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}

pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn pkcs8_from_pem(data: &[u8], password: Option<&[u8]>) -> Result<Vec<u8>> {
    let blocks =
        pem::parse_many(data).map_err(|e| Error::cert_caused("malformed PEM in private key", e))?;
    let block = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| {
            let found: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
            if found.is_empty() {
                Error::cert("no PEM private key found")
            } else {
                Error::cert(format!(
                    "no private key in the PEM data (found: {})",
                    found.join(", ")
                ))
            }
        })?;
    let contents = match block.headers().get("Proc-Type") {
        Some(proc_type) if proc_type.contains("ENCRYPTED") => {
            let dek_info = block.headers().get("DEK-Info").ok_or_else(|| {
                Error::cert("encrypted PEM private key without a DEK-Info header")
            })?;
            let password = password.ok_or_else(|| {
                Error::cert("the private key is encrypted: a password is needed to load it")
            })?;
            legacy_pem_decrypt(dek_info, password, block.contents())?
        }
        _ => block.contents().to_vec(),
    };
    match block.tag() {
        "PRIVATE KEY" => Ok(contents),
        "ENCRYPTED PRIVATE KEY" => decrypt_pkcs8(&contents, password),
        "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&contents),
        "EC PRIVATE KEY" => sec1_to_pkcs8(&contents),
        other => Err(Error::cert(format!(
            "unsupported private key type {other:?}"
        ))),
    }
}

fn pkcs8_from_der(data: &[u8], password: Option<&[u8]>) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Err(Error::cert("the private key data is empty"));
    }
    if KeyPair::try_from(data).is_ok() {
        return Ok(data.to_vec());
    }
    if pkcs8::EncryptedPrivateKeyInfoRef::try_from(data).is_ok() {
        return decrypt_pkcs8(data, password);
    }
    if let Ok(pkcs8) = pkcs1_to_pkcs8(data) {
        return Ok(pkcs8);
    }
    if let Ok(pkcs8) = sec1_to_pkcs8(data) {
        return Ok(pkcs8);
    }
    Err(Error::cert(
        "unrecognised private key: expected PEM, or DER in PKCS#8, PKCS#1 or SEC1 form",
    ))
}

fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Vec<u8>> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::from_pkcs1_der(pkcs1)
        .map_err(|e| Error::cert_caused("malformed RSA (PKCS#1) private key", e))?;
    Ok(key
        .to_pkcs8_der()
        .map_err(|e| Error::cert_caused("RSA key conversion failed", e))?
        .as_bytes()
        .to_vec())
}

/// DER of the AlgorithmIdentifier for id-ecPublicKey on P-256 and on P-384.
const EC_P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
const EC_P384_ALGORITHM: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

/// Wraps a SEC1 `ECPrivateKey` into PKCS#8. ring checks the curve named inside the SEC1
/// structure against the wrapper's, so trying each supported curve finds the right one without
/// a second ASN.1 parser.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>> {
    for algorithm in [EC_P256_ALGORITHM, EC_P384_ALGORITHM] {
        let mut body = vec![0x02, 0x01, 0x00];
        body.extend_from_slice(algorithm);
        body.extend(der_tlv(0x04, sec1));
        let pkcs8 = der_tlv(0x30, &body);
        if KeyPair::try_from(pkcs8.as_slice()).is_ok() {
            return Ok(pkcs8);
        }
    }
    Err(Error::cert(
        "malformed or unsupported EC (SEC1) private key: dpskit supports P-256 and P-384",
    ))
}

pub(crate) fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Decrypts OpenSSL's legacy PEM encryption (`Proc-Type: 4,ENCRYPTED` + `DEK-Info`), which
/// `certGen.sh` and `openssl ec -aes256` still produce. The key comes from `EVP_BytesToKey`
/// with MD5 and one round, salted with the first 8 bytes of the IV.
fn legacy_pem_decrypt(dek_info: &str, password: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
    use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};

    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| Error::cert(format!("malformed DEK-Info header {dek_info:?}")))?;
    let iv = decode_hex(iv_hex.trim())
        .ok_or_else(|| Error::cert(format!("malformed IV in DEK-Info header {dek_info:?}")))?;
    let cipher = cipher.trim().to_ascii_uppercase();
    let key_len = match cipher.as_str() {
        "AES-128-CBC" => 16,
        "AES-192-CBC" => 24,
        "AES-256-CBC" => 32,
        "DES-EDE3-CBC" => 24,
        other => {
            return Err(Error::cert(format!(
                "unsupported PEM encryption {other}; re-encrypt the key with `openssl pkcs8 -topk8`"
            )));
        }
    };
    if iv.len() < 8 {
        return Err(Error::cert(format!(
            "IV too short in DEK-Info header {dek_info:?}"
        )));
    }
    let key = evp_bytes_to_key(password, &iv[..8], key_len);
    let wrong = |_| Error::cert("cannot decrypt the private key: wrong password");
    let bad_iv = |_| Error::cert(format!("bad IV length in DEK-Info header {dek_info:?}"));
    let plain = match cipher.as_str() {
        "AES-128-CBC" => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .map_err(bad_iv)?
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(wrong)?,
        "AES-192-CBC" => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .map_err(bad_iv)?
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(wrong)?,
        "AES-256-CBC" => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(bad_iv)?
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(wrong)?,
        _ => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map_err(bad_iv)?
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(wrong)?,
    };
    // A wrong password decrypts to valid padding about once in 256 tries; the caller's parse
    // then fails, which we report the same way.
    if plain.first() != Some(&0x30) {
        return Err(Error::cert(
            "cannot decrypt the private key: wrong password",
        ));
    }
    Ok(plain)
}

fn evp_bytes_to_key(password: &[u8], salt: &[u8], key_len: usize) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut key = Vec::with_capacity(key_len + 16);
    let mut previous: Vec<u8> = Vec::new();
    while key.len() < key_len {
        let mut hasher = Md5::new();
        hasher.update(&previous);
        hasher.update(password);
        hasher.update(salt);
        previous = hasher.finalize().to_vec();
        key.extend_from_slice(&previous);
    }
    key.truncate(key_len);
    key
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A `rand_core` RNG backed by ring's system RNG, so the `rsa` crate's key generation draws
/// from the same source as everything else.
pub(crate) struct RingRng;

/// The system random number generator failed.
#[derive(Debug)]
pub(crate) struct RngFailure;

impl fmt::Display for RngFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

impl std::error::Error for RngFailure {}

impl rsa::rand_core::TryRng for RingRng {
    type Error = RngFailure;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        fill_random(dst).map_err(|_| RngFailure)
    }
}

impl rsa::rand_core::TryCryptoRng for RingRng {}
