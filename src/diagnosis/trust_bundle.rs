//! The server trust bundle a device uses (helper A fills this in; see the brief).

use super::Check;
use crate::pki::Certificate;

/// The servers a device talks to, and so the roots its trust bundle must hold.
#[derive(Clone, Debug)]
pub enum ServerRoots {
    /// Azure's public endpoints (DigiCert Global Root G2 today).
    Azure,
    /// Servers whose chain ends at these anchors (the local cloud's own CA).
    Custom {
        /// What the servers are, for evidence ("the local cloud").
        label: String,
        /// The anchors.
        anchors: Vec<Certificate>,
    },
}

/// A trust bundle as the device holds it.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    /// Where it came from (a path, or "the PEM given").
    pub source: String,
    /// Its certificates.
    pub certificates: Vec<Certificate>,
}

/// The `server.trust` check; `None` when the device's bundle was not given.
pub fn check(bundle: Option<&TrustBundle>, servers: &ServerRoots, now: i64) -> Check {
    let _ = (bundle, servers, now);
    Check::skipped(
        "server.trust",
        "The server trust bundle",
        "no trust bundle given",
    )
}
