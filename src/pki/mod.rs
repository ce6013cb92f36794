//! The X.509 toolkit: keys, CA hierarchies, device and verification certificates, CSRs made and
//! signed,
//! PEM/DER/PKCS#12 output, loading, inspection and chain verification.

pub(crate) mod cert;
pub(crate) mod chain;
pub(crate) mod csr;
pub(crate) mod files;
pub(crate) mod issue;
pub(crate) mod keys;
pub(crate) mod pkcs12;
pub(crate) mod registration_id;

#[cfg(test)]
mod tests;

pub use cert::{Certificate, CertificateInfo};
pub use chain::verify_chain;
pub use csr::CertificateRequest;
pub use files::{
    ManifestFormat, SaveOptions, SavedFiles, iso_utc, save_credential, save_devices, slug,
    write_public, write_secret,
};
pub use issue::{
    CaOptions, CertificateAuthority, Credential, DeviceCredential, PermittedName, Validity,
};
pub use keys::{KeyAlgorithm, PrivateKey};
pub use pkcs12::{from_pkcs12, order_chain, to_pkcs12};
pub(crate) use registration_id::validate_registration_id;
