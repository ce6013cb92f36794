//! dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.
//!
//! The core is plain Rust (no Python): the X.509 toolkit in [`pki`]. The `python` feature adds
//! the PyO3 bindings that form the `dpskit._native` extension module.

pub mod error;
pub mod pki;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
