//! The diagnosis vocabulary and the rules that need no client or server of their own: what a
//! check found (`Check`: a verdict, the evidence, the fix in one sentence, and the classic
//! cause it names), the device's credential as the device holds it (`credential`), the offline
//! checks of that credential (`offline`), the server trust bundle (`trust_bundle`), the
//! catalogue of DPS and IoT Hub errors (`errors`) and which enrollment admits an X.509 device
//! (`enrollment`: given what DPS holds; the emulator decides with it). Shared layer: the device
//! clients' refusal hints, `dpskit doctor` (device side, `crate::doctor`) and the emulator all
//! judge through these rules.

pub mod credential;
pub mod enrollment;
pub mod errors;
pub mod offline;
pub mod trust_bundle;

use serde::Serialize;

/// How a check came out. Ordered as a report lists them: what fails first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The device cannot provision (or connect) until this is fixed.
    Problem,
    /// It works today but is fragile, or works only under a condition the check cannot see.
    Warning,
    /// Checked and fine.
    Ok,
    /// Not run: an input it needs is missing or an earlier check failed.
    Skipped,
}

impl Verdict {
    /// The name printed and sent to Python (`problem`, `warning`, `ok`, `skipped`).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Problem => "problem",
            Verdict::Warning => "warning",
            Verdict::Ok => "ok",
            Verdict::Skipped => "skipped",
        }
    }
}

/// The causes of a refused device that users meet, each named once. A problem names the one
/// it is; a report's causes are its problems' causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// A file does not parse, or the password does not open it.
    Unreadable,
    /// The certificates are not leaf first, each issued by the next.
    ChainOrder,
    /// The private key belongs to none of the certificates.
    KeyMismatch,
    /// The chain the device sends stops short of the CA its enrollment names.
    MissingIntermediate,
    /// The same, because the PKCS#12 file holds no intermediates.
    Pkcs12WithoutChain,
    /// The leaf's CN is not a valid registration id.
    InvalidRegistrationId,
    /// The leaf's CN is not the registration id the device uses.
    CnMismatch,
    /// The device certificate has expired.
    ExpiredLeaf,
    /// A certificate is not valid yet (or the device's clock is wrong).
    NotYetValid,
    /// A CA certificate of the chain has expired.
    ExpiredIntermediate,
    /// The leaf is a CA certificate, or its key usage or extended key usage forbids client
    /// authentication.
    UnfitLeaf,
    /// A key or signature algorithm Azure does not accept (RSA below 2048 bits, SHA-1, ...).
    UnsupportedAlgorithm,
    /// A CA of the chain may not issue what is below it: not a CA, no keyCertSign, or its
    /// path length constraint is exceeded.
    PathLength,
    /// The server trust bundle holds only the retired Baltimore CyberTrust Root.
    StaleTrustBundle,
    /// The server trust bundle lacks the root the target's servers chain to.
    UntrustedServer,
    /// The CA the enrollment relies on is uploaded but not verified.
    UnverifiedCa,
    /// No enrollment of the DPS names a CA of the device's chain.
    WrongCaInGroup,
    /// The individual enrollment for this registration id does not accept this certificate.
    IndividualEnrollmentMismatch,
    /// The enrollment DPS would pick is disabled.
    DisabledEnrollment,
    /// The enrollment has no linked hub to assign the device to.
    NoLinkedHub,
    /// The hub identity DPS created is disabled.
    HubIdentityDisabled,
    /// The hub identity DPS created does not authenticate this certificate.
    HubIdentityMismatch,
    /// The endpoint could not be reached.
    Unreachable,
}

impl Cause {
    /// The stable name (`missing-intermediate`, ...) printed, sent to Python and in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Unreadable => "unreadable",
            Cause::ChainOrder => "chain-order",
            Cause::KeyMismatch => "key-mismatch",
            Cause::MissingIntermediate => "missing-intermediate",
            Cause::Pkcs12WithoutChain => "pkcs12-without-chain",
            Cause::InvalidRegistrationId => "invalid-registration-id",
            Cause::CnMismatch => "cn-mismatch",
            Cause::ExpiredLeaf => "expired-leaf",
            Cause::NotYetValid => "not-yet-valid",
            Cause::ExpiredIntermediate => "expired-intermediate",
            Cause::UnfitLeaf => "unfit-leaf",
            Cause::UnsupportedAlgorithm => "unsupported-algorithm",
            Cause::PathLength => "path-length",
            Cause::StaleTrustBundle => "stale-trust-bundle",
            Cause::UntrustedServer => "untrusted-server",
            Cause::UnverifiedCa => "unverified-ca",
            Cause::WrongCaInGroup => "wrong-ca-in-group",
            Cause::IndividualEnrollmentMismatch => "individual-enrollment-mismatch",
            Cause::DisabledEnrollment => "disabled-enrollment",
            Cause::NoLinkedHub => "no-linked-hub",
            Cause::HubIdentityDisabled => "hub-identity-disabled",
            Cause::HubIdentityMismatch => "hub-identity-mismatch",
            Cause::Unreachable => "unreachable",
        }
    }

    /// Every cause, in the order above (for `dpskit doctor`'s help and the stub's literal).
    pub const ALL: [Cause; 23] = [
        Cause::Unreadable,
        Cause::ChainOrder,
        Cause::KeyMismatch,
        Cause::MissingIntermediate,
        Cause::Pkcs12WithoutChain,
        Cause::InvalidRegistrationId,
        Cause::CnMismatch,
        Cause::ExpiredLeaf,
        Cause::NotYetValid,
        Cause::ExpiredIntermediate,
        Cause::UnfitLeaf,
        Cause::UnsupportedAlgorithm,
        Cause::PathLength,
        Cause::StaleTrustBundle,
        Cause::UntrustedServer,
        Cause::UnverifiedCa,
        Cause::WrongCaInGroup,
        Cause::IndividualEnrollmentMismatch,
        Cause::DisabledEnrollment,
        Cause::NoLinkedHub,
        Cause::HubIdentityDisabled,
        Cause::HubIdentityMismatch,
        Cause::Unreachable,
    ];
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id (`chain.order`, `enrollment.match`, ...): what tests and scripts key on.
    pub id: &'static str,
    /// What was checked, in a few words.
    pub title: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was seen: names, dates, thumbprints; never a secret.
    pub evidence: String,
    /// What to change, in one sentence; `None` when nothing needs changing.
    pub fix: Option<String>,
    /// The classic cause a problem (or a warning) names.
    pub cause: Option<Cause>,
}

impl Check {
    /// A passed check.
    pub fn ok(id: &'static str, title: &'static str, evidence: impl Into<String>) -> Self {
        Check {
            id,
            title,
            verdict: Verdict::Ok,
            evidence: evidence.into(),
            fix: None,
            cause: None,
        }
    }

    /// A check not run, saying why.
    pub fn skipped(id: &'static str, title: &'static str, why: impl Into<String>) -> Self {
        Check {
            id,
            title,
            verdict: Verdict::Skipped,
            evidence: why.into(),
            fix: None,
            cause: None,
        }
    }

    /// A problem: the device is refused until `fix` is done.
    pub fn problem(
        id: &'static str,
        title: &'static str,
        cause: Cause,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            id,
            title,
            verdict: Verdict::Problem,
            evidence: evidence.into(),
            fix: Some(fix.into()),
            cause: Some(cause),
        }
    }

    /// A warning, with the cause it may turn into (if any) and the fix.
    pub fn warning(
        id: &'static str,
        title: &'static str,
        cause: Option<Cause>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            id,
            title,
            verdict: Verdict::Warning,
            evidence: evidence.into(),
            fix: Some(fix.into()),
            cause,
        }
    }
}

/// Orders checks as a report shows them: problems, then warnings, then the rest, each group
/// in the order the checks ran.
pub fn failing_first(checks: &mut [Check]) {
    checks.sort_by_key(|c| c.verdict);
}

/// The distinct causes of the problems among `checks`, in the order they appear.
pub fn causes(checks: &[Check]) -> Vec<Cause> {
    let mut out = Vec::new();
    for check in checks.iter().filter(|c| c.verdict == Verdict::Problem) {
        if let Some(cause) = check.cause
            && !out.contains(&cause)
        {
            out.push(cause);
        }
    }
    out
}
