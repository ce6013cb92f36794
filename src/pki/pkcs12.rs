//! PKCS#12 (PFX) output with the full chain, modern or legacy, and PFX input.

use crate::error::{Error, Result};
use crate::pki::cert::Certificate;
use crate::pki::issue::{Credential, key_matches};
use crate::pki::keys::PrivateKey;

/// PBKDF rounds for both encryption and MAC: OpenSSL 3's own default (2048) is what .NET and
/// Windows import quickly; we use more, still far inside .NET's import limits.
const PKCS12_ROUNDS: u32 = 10_000;
/// Legacy files follow OpenSSL 1.1's defaults, which old Windows / .NET Framework read.
const LEGACY_ROUNDS: u32 = 2_048;

/// Encodes `credential` (certificate, key, every known issuer) as PKCS#12.
///
/// Modern: PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with an HMAC-SHA256 MAC, read by OpenSSL 3,
/// .NET Core 3+ and Windows 10 1709+. Legacy: pbeWithSHA1And3-KeyTripleDES-CBC with an
/// HMAC-SHA1 MAC, for .NET Framework and older Windows.
pub fn to_pkcs12(
    credential: &Credential,
    password: &str,
    legacy: bool,
    friendly_name: &str,
) -> Result<Vec<u8>> {
    use p12_keystore::{
        EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain,
    };

    let failed = |e: p12_keystore::error::Error| Error::cert_caused("PKCS#12 encoding failed", e);
    let mut certs = Vec::with_capacity(1 + credential.issuers().len());
    for cert in std::iter::once(credential.certificate()).chain(credential.issuers()) {
        certs.push(p12_keystore::Certificate::from_der(cert.der()).map_err(failed)?);
    }
    let key = p12_keystore::PrivateKey::from_der(credential.key().pkcs8_der()).map_err(failed)?;
    // OpenSSL links key and certificate through localKeyId = SHA-1 of the certificate.
    let local_key_id = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        credential.certificate().der(),
    );
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id.as_ref(), key, certs)),
    );
    let writer = store.writer(password);
    let writer = if legacy {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .encryption_iterations(LEGACY_ROUNDS)
            .mac_iterations(LEGACY_ROUNDS)
    } else {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .encryption_iterations(PKCS12_ROUNDS)
            .mac_iterations(PKCS12_ROUNDS)
    };
    writer.write().map_err(failed)
}

/// Reads a PKCS#12 file: the key, the certificate that matches it, and the other certificates
/// as its chain (nearest issuer first when they can be ordered).
pub fn from_pkcs12(data: &[u8], password: &str) -> Result<Credential> {
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(data, password).map_err(|e| {
        Error::cert_caused(
            "cannot open the PKCS#12 data (wrong password, or not a PKCS#12 file)",
            e,
        )
    })?;
    let key_bag = archive
        .keys
        .first()
        .ok_or_else(|| Error::cert("the PKCS#12 data holds no private key"))?;
    let key = PrivateKey::from_pkcs8(key_bag.key.as_der())?;
    let mut certs = archive
        .certs
        .iter()
        .map(|bag| Certificate::from_der(bag.cert.as_der()))
        .collect::<Result<Vec<_>>>()?;
    if certs.is_empty() {
        return Err(Error::cert("the PKCS#12 data holds no certificate"));
    }
    let leaf_index = certs
        .iter()
        .position(|c| key_matches(c, &key))
        .ok_or_else(|| Error::cert("no certificate in the PKCS#12 data matches its private key"))?;
    let leaf = certs.remove(leaf_index);
    let chain = order_chain(&leaf, certs);
    Credential::new(leaf, key, chain)
}

/// Orders loose certificates as the issuer chain of `leaf` (nearest first); certificates that
/// do not belong to the chain follow in their original order.
pub fn order_chain(leaf: &Certificate, mut pool: Vec<Certificate>) -> Vec<Certificate> {
    let mut ordered = Vec::with_capacity(pool.len());
    let mut current = leaf.clone();
    while let Some(i) = pool
        .iter()
        .position(|c| c.is_issuer_name_of(&current) && current.is_signed_by(c))
    {
        let issuer = pool.remove(i);
        current = issuer.clone();
        let self_signed = issuer.info().is_self_signed;
        ordered.push(issuer);
        if self_signed {
            break;
        }
    }
    ordered.extend(pool);
    ordered
}
