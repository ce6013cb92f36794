//! dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.
//!
//! The core is plain Rust (no Python): the X.509 toolkit in [`pki`], SAS tokens in [`sas`], and
//! the device clients in [`provisioning`] and [`hub`], many devices at once in [`fleet`], and
//! the local cloud in [`emulator`]. What the clients and the emulator share sits under both:
//! [`protocol`], [`limits`] and [`transport`], with [`clock`] and [`random`]; the two sides
//! never import each other (`layers_tests` checks it). The `python` feature adds the PyO3 bindings that
//! form the `dpskit._native` extension module.

pub mod clock;
pub mod emulator;
pub mod error;
pub mod fleet;
pub mod hub;
pub mod limits;
pub mod pki;
pub mod protocol;
pub mod provisioning;
pub mod random;
pub mod sas;
pub mod service;
pub mod transport;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod layers_tests;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
