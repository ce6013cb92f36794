//! dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.
//!
//! The core is plain Rust (no Python): the X.509 toolkit in [`pki`], SAS tokens in [`sas`], and
//! the local cloud in [`emulator`]. The `python` feature adds
//! the PyO3 bindings that form the `dpskit._native` extension module.

pub mod emulator;
pub mod error;
pub mod pki;
pub mod provisioning;
pub mod sas;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
