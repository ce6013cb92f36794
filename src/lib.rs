//! dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.
//!
//! The core is plain Rust (no Python): the X.509 toolkit in [`pki`], SAS tokens in [`sas`], and
//! the device clients in [`provisioning`] and [`hub`], many devices at once in [`fleet`], the
//! REST clients of ARM and the service APIs in [`service`], and the local cloud in
//! [`emulator`]; Azure's limits in [`limits`] and the shared TLS, trust and MQTT transport in
//! [`transport`]. What the clients and the emulator share sits under both (`protocol`, `limits`,
//! `transport`, `clock`, `random`); the two sides never import each other (`layers_tests`
//! checks it). The `python` feature adds the PyO3 bindings that form the `dpskit._native`
//! extension module.
//!
//! The public surface is curated: each public module keeps its files private and re-exports
//! what a user of the crate calls (the most used items also from the crate root, below);
//! everything else is `pub(crate)`, and the `unreachable_pub` lint keeps it so.

mod clock;
pub mod diagnosis;
pub mod doctor;
pub mod emulator;
pub mod error;
pub mod fleet;
pub mod hub;
pub mod limits;
pub mod pki;
mod protocol;
pub mod provisioning;
mod random;
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

pub use clock::Clock;
pub use emulator::{
    AZURE_POLL_RETRY_AFTER, Emulator, EmulatorConfig, Limits, RestBehaviour, RestLimits, WEB_PORT,
};
pub use error::{BoxError, Detail, Error, Result, ServiceErrorKind, ServiceFailure};
pub use fleet::HubConnections;
pub use fleet::engine::{FleetResult, FleetSettings};
pub use hub::{ConnectionState, HubClient, HubConnectOptions, TelemetryMessage};
pub use pki::{
    CaOptions, Certificate, CertificateAuthority, CertificateInfo, Credential, DeviceCredential,
    KeyAlgorithm, PermittedName, PrivateKey, Validity, verify_chain,
};
pub use provisioning::{
    DeviceAuth, ProvisioningRequest, RegistrationResult, provision, provision_many,
};
pub use sas::{SasToken, derive_device_key};
pub use service::arm::{AZURE_ARM_ENDPOINT, ArmClient, TokenSource, static_token};
pub use service::dps::DpsServiceClient;
pub use service::hub::HubServiceClient;
pub use transport::Trust;
pub use transport::mqtt::{DeviceTransport, Via};
pub use transport::proxy::Proxy;
