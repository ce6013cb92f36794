//! The X.509 toolkit: keys, CA hierarchies, device and verification certificates, CSR signing,
//! PEM/DER/PKCS#12 output, loading, inspection and chain verification.

pub mod cert;
pub mod chain;
pub mod files;
pub mod issue;
pub mod keys;
pub mod pkcs12;
pub mod registration_id;

#[cfg(test)]
mod tests;

pub use cert::{Certificate, CertificateInfo};
pub use chain::verify_chain;
pub use issue::{
    CaOptions, CertificateAuthority, Credential, DeviceCredential, PermittedName, Validity,
};
pub use keys::{KeyAlgorithm, PrivateKey};
pub use registration_id::validate_registration_id;
