//! Chain verification that explains itself: it walks from the leaf to a trusted anchor and,
//! when it cannot, says which link broke and why (the 401002 causes users meet in DPS).

use crate::error::{Error, Result};
use crate::pki::cert::Certificate;

/// Longest chain we follow; Azure's own guidance stops well before this.
const MAX_DEPTH: usize = 16;

/// Verifies that `leaf` chains through `intermediates` to one of `anchors` at Unix time `at`,
/// and returns the path from the leaf to the anchor.
///
/// Checks: issuer names, signatures, validity of every certificate on the path, that every
/// issuer is a CA allowed to sign certificates, and path length constraints.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    at: i64,
) -> Result<Vec<Certificate>> {
    if anchors.is_empty() {
        return Err(Error::cert(
            "no trust anchors given: pass the root (or the CA you trust) as an anchor",
        ));
    }
    let mut path = vec![leaf.clone()];
    loop {
        let current = path.last().cloned().unwrap_or_else(|| leaf.clone());
        check_validity(&current, at)?;
        if anchors.contains(&current) {
            return Ok(path);
        }
        if path.len() > MAX_DEPTH {
            return Err(Error::cert(format!(
                "chain longer than {MAX_DEPTH} certificates: giving up"
            )));
        }
        let named: Vec<&Certificate> = anchors
            .iter()
            .chain(intermediates)
            .filter(|c| !path.contains(c) && c.is_issuer_name_of(&current))
            .collect();
        if named.is_empty() {
            let info = current.info();
            return Err(Error::cert(if info.is_self_signed {
                format!(
                    "{} is self-signed and is not one of the trusted anchors",
                    describe(&current)
                )
            } else {
                format!(
                    "unknown issuer: no certificate named '{}' (the issuer of {}) is among the \
                     intermediates or anchors; send the full chain or trust that CA",
                    info.issuer,
                    describe(&current)
                )
            }));
        }
        let issuer = named
            .iter()
            .find(|c| current.is_signed_by(c))
            .copied()
            .ok_or_else(|| {
                Error::cert(format!(
                    "bad signature: {} names '{}' as issuer, but the signature does not verify with \
                     that certificate's key (a different CA with the same name, or a tampered \
                     certificate)",
                    describe(&current),
                    current.info().issuer
                ))
            })?;
        check_can_issue(issuer, &current, path.len() - 1)?;
        path.push(issuer.clone());
    }
}

fn check_validity(cert: &Certificate, at: i64) -> Result<()> {
    let info = cert.info();
    if at < info.not_before {
        return Err(Error::cert(format!(
            "{} is not yet valid: valid from {}",
            describe(cert),
            format_time(info.not_before)
        )));
    }
    if at > info.not_after {
        return Err(Error::cert(format!(
            "{} has expired: valid until {}",
            describe(cert),
            format_time(info.not_after)
        )));
    }
    Ok(())
}

/// `cas_below` counts the CA certificates between `issuer` and the leaf (the leaf excluded).
fn check_can_issue(issuer: &Certificate, child: &Certificate, cas_below: usize) -> Result<()> {
    let info = issuer.info();
    if !info.is_ca {
        return Err(Error::cert(format!(
            "{} is not a CA (basicConstraints CA:TRUE missing) and cannot issue {}",
            describe(issuer),
            describe(child)
        )));
    }
    if !info.key_usage.is_empty() && !info.key_usage.iter().any(|u| u == "keyCertSign") {
        return Err(Error::cert(format!(
            "{} lacks keyCertSign in its keyUsage and cannot issue {}",
            describe(issuer),
            describe(child)
        )));
    }
    if let Some(limit) = info.path_length
        && cas_below > limit as usize
    {
        return Err(Error::cert(format!(
            "path length exceeded: {} allows {limit} CA certificate(s) below it, the chain has {cas_below}",
            describe(issuer)
        )));
    }
    Ok(())
}

pub(crate) fn describe(cert: &Certificate) -> String {
    let info = cert.info();
    match &info.common_name {
        Some(cn) => format!("'{cn}'"),
        None => format!("'{}'", info.subject),
    }
}

/// RFC 3339 UTC rendering of Unix seconds.
pub(crate) fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
