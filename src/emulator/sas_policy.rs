//! The SAS check every service-side entrance shares: a token's `sr` host picks the resource,
//! its `skn` one of the resource's shared access policies, whose primary or secondary key must
//! have signed it. The REST service APIs (Authorization header) and the AMQP endpoint (CBS
//! put-token, `$management`'s `security_token`) both call [`grant`], so a token is judged the
//! same way whatever door it comes through; rights and scope stay each caller's to check.

use crate::emulator::model::SharedAccessPolicy;

/// A SAS token's grant: what signed it and what it may reach.
pub(crate) struct SasGrant<T> {
    /// The resource (hub, DPS) whose policy key signed the token.
    pub(crate) signer: T,
    /// The policy named by `skn`.
    pub(crate) policy: SharedAccessPolicy,
    /// `sr` after the host, lower-case, as path segments (empty: the whole host).
    pub(crate) scope: Vec<String>,
    /// When the token expires, Unix seconds.
    pub(crate) expiry: i64,
}

impl<T> SasGrant<T> {
    /// Whether `sr` covers the resource at `segments` (the request path): as Azure compares
    /// it, case-insensitively and by whole segments, so `devices/dev-a` does not cover
    /// `devices/dev-ab`.
    pub(crate) fn covers(&self, segments: &[&str]) -> bool {
        self.scope.len() <= segments.len()
            && self
                .scope
                .iter()
                .zip(segments)
                .all(|(scope, segment)| scope.eq_ignore_ascii_case(segment))
    }
}

/// Judges `token` (`SharedAccessSignature sr=...&sig=...&se=...&skn=...`), expired when `now`
/// (the cloud's clock, Unix seconds) is past its `se`, against the
/// candidates `(resource, host, policies)`. `ports` are the ports an `sr` may name after the
/// host (the port the resource is served at: a connection string naming one makes the SDKs
/// sign `host:port`); `schemes` the prefixes an `sr` may carry before the host (the Event Hubs
/// clients sign `sb://host/entity`); `key_text` also accepts a signature made with the key's
/// text as the HMAC key (how the Event Hubs clients use a connection string's key). `api`
/// names the resource in the refusals.
pub(crate) fn grant<T>(
    token: &str,
    now: i64,
    api: &str,
    ports: &[u16],
    schemes: &[&str],
    key_text: bool,
    candidates: impl IntoIterator<Item = (T, String, Vec<SharedAccessPolicy>)>,
) -> Result<SasGrant<T>, String> {
    let token = crate::sas::SasToken::parse(token).map_err(|e| e.to_string())?;
    if token.expiry < now {
        return Err("The SAS token has expired.".into());
    }
    // Azure tolerates a trailing slash and compares without regard to case.
    let mut resource = token.resource.trim_end_matches('/').to_ascii_lowercase();
    if let Some(rest) = schemes
        .iter()
        .find_map(|scheme| resource.strip_prefix(&scheme.to_ascii_lowercase()))
    {
        resource = rest.to_string();
    }
    let mut parts_of_sr = resource.split('/');
    let host = parts_of_sr.next().unwrap_or_default().to_string();
    let scope: Vec<String> = parts_of_sr.map(str::to_string).collect();
    let key_name = token
        .key_name
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| "The SAS token must name a shared access policy (skn).".to_string())?;
    let mut host_known = false;
    let mut policy_known = false;
    let host_without_port = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok_and(|p| ports.contains(&p)))
        .map(|(name, _)| name);
    for (signer, candidate_host, policies) in candidates {
        if !candidate_host.eq_ignore_ascii_case(&host)
            && !host_without_port.is_some_and(|name| candidate_host.eq_ignore_ascii_case(name))
        {
            continue;
        }
        host_known = true;
        let Some(policy) = policies
            .into_iter()
            .find(|p| p.key_name.eq_ignore_ascii_case(key_name))
        else {
            continue;
        };
        policy_known = true;
        let signed_by =
            |key: &str| token.is_signed_by(key) || (key_text && token.is_signed_by_key_text(key));
        if signed_by(&policy.primary_key) || signed_by(&policy.secondary_key) {
            return Ok(SasGrant {
                signer,
                policy,
                scope,
                expiry: token.expiry,
            });
        }
    }
    Err(if !host_known {
        format!(
            "The SAS token's sr ({}) is not a {api} of this emulator.",
            token.resource
        )
    } else if !policy_known {
        format!("The {api} has no shared access policy named {key_name}.")
    } else {
        format!("The SAS token is not signed by a key of the {key_name} policy.")
    })
}
