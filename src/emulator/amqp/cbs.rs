//! Claims-based security: the `$cbs` node where a client puts a SAS token before it may
//! attach to anything else, and the connection's record of what those tokens granted.
//!
//! A token is judged by the shared SAS check (`sas_policy`): its `sr` must name a hub's host
//! (`sb://{host}[:port]/{entity}` from the Event Hubs clients, `{host}[:port]` from the IoT
//! Hub service SDK), its `skn` one of that hub's policies, and that policy must carry
//! `ServiceConnect` (`service`, `iothubowner`). A refused token is answered 401 (the clients
//! raise an authentication error) and grants nothing; a granted one lasts until its `se`.

use std::sync::Mutex;

use fe2o3_amqp::types::messaging::{AmqpValue, Body};
use fe2o3_amqp::types::primitives::Value;

use super::node::{NodeMessage, property, reply};
use crate::emulator::amqp::AmqpContext;
use crate::protocol::event_hubs::{self, SAS_TOKEN_TYPE, keys};

/// The right a token needs to read events or send cloud-to-device messages.
pub(crate) const SERVICE_CONNECT: &str = "ServiceConnect";

/// What a token put on this connection grants: one hub (by name), the `sr` scope under its
/// host, until `expiry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The hub's resource name.
    pub(crate) hub: String,
    /// The `sr` path after the host, lower case (empty: the whole hub).
    pub(crate) scope: Vec<String>,
    /// Unix seconds.
    pub(crate) expiry: i64,
}

impl Grant {
    /// Whether the grant reaches `hub`'s resource at `segments` (the entity path, e.g. the
    /// hub's name for its events), at `now` (the cloud's clock, Unix seconds).
    pub(crate) fn covers(&self, hub: &str, segments: &[&str], now: i64) -> bool {
        self.hub.eq_ignore_ascii_case(hub)
            && self.expiry >= now
            && self.scope.len() <= segments.len()
            && self
                .scope
                .iter()
                .zip(segments)
                .all(|(scope, segment)| scope.eq_ignore_ascii_case(segment))
    }
}

/// The grants of one connection's tokens (a client refreshes its token by putting a new one),
/// judged on the cloud's clock: a token runs out when the cloud's time passes its expiry.
#[derive(Debug)]
pub(crate) struct Grants {
    grants: Mutex<Vec<Grant>>,
    clock: crate::clock::Clock,
}

impl Grants {
    /// No grants yet, judged on `clock`.
    pub(crate) fn new(clock: crate::clock::Clock) -> Self {
        Grants {
            grants: Mutex::new(Vec::new()),
            clock,
        }
    }

    /// Records a granted token, dropping those expired.
    pub(crate) fn add(&self, grant: Grant) {
        let now = self.clock.now();
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.retain(|g| g.expiry >= now);
        // Bounded: a client putting tokens in a loop replaces, rather than adds, its grants.
        grants.retain(|g| !(g.hub == grant.hub && g.scope == grant.scope));
        grants.push(grant);
    }

    /// Whether a token put on this connection reaches `hub`'s resource at `segments`.
    pub(crate) fn cover(&self, hub: &str, segments: &[&str]) -> bool {
        let now = self.clock.now();
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|g| g.covers(hub, segments, now))
    }
}

/// Judges a SAS token for the AMQP endpoint: which hub's `ServiceConnect` policy signed it
/// and what its `sr` reaches; `Err` says why not (the 401's description).
pub(crate) fn authorize(context: &AmqpContext, token: &str) -> Result<Grant, String> {
    let candidates = context
        .cloud
        .hubs()
        .into_iter()
        .map(|h| (h.name, h.host_name, h.policies));
    let grant = crate::emulator::sas_policy::grant(
        token,
        context.cloud.clock().now(),
        "IoT hub",
        &context.accepted_ports(),
        &["sb://", "amqps://", "amqp://", "https://"],
        true,
        candidates,
    )?;
    if !grant.policy.grants(SERVICE_CONNECT) {
        return Err(format!(
            "The shared access policy {} does not grant {SERVICE_CONNECT}.",
            grant.policy.key_name
        ));
    }
    Ok(Grant {
        hub: grant.signer,
        scope: grant.scope,
        expiry: grant.expiry,
    })
}

/// Answers a `$cbs` request: `put-token` with a SAS token as an AMQP string, which the
/// connection keeps as a grant once judged.
pub(crate) fn put_token(
    context: &AmqpContext,
    grants: &Grants,
    request: &NodeMessage,
) -> NodeMessage {
    if property(request, keys::OPERATION).as_deref() != Some(event_hubs::PUT_TOKEN) {
        return reply(
            request,
            400,
            "The $cbs node serves put-token only.",
            Value::Null,
        );
    }
    if property(request, keys::TYPE).is_some_and(|t| t != SAS_TOKEN_TYPE) {
        return reply(
            request,
            400,
            &format!("Only {SAS_TOKEN_TYPE} tokens are accepted."),
            Value::Null,
        );
    }
    let token = match &request.body {
        Body::Value(AmqpValue(Value::String(token))) => token,
        _ => {
            return reply(
                request,
                400,
                "The token must be an AMQP string value.",
                Value::Null,
            );
        }
    };
    match authorize(context, token) {
        Ok(grant) => {
            grants.add(grant);
            reply(request, 200, "OK", Value::Null)
        }
        Err(why) => {
            log::info!("emulator: AMQP token refused: {why}");
            reply(request, 401, &why, Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_reaches_its_hub_and_scope_until_it_expires() {
        let clock = crate::clock::Clock::system();
        let grants = Grants::new(clock.clone());
        assert!(
            !grants.cover("hub", &["hub"]),
            "nothing is granted before a token"
        );
        let now = clock.now();
        grants.add(Grant {
            hub: "hub".into(),
            scope: vec!["hub".into()],
            expiry: now + 60,
        });
        assert!(grants.cover("HUB", &["Hub", "ConsumerGroups"]));
        assert!(!grants.cover("other", &["other"]));
        assert!(!grants.cover("hub", &["hubx"]));
        assert!(!grants.cover("hub", &[]));
        let whole = Grant {
            hub: "other".into(),
            scope: vec![],
            expiry: now - 1,
        };
        assert!(
            !whole.covers("other", &["other"], now),
            "an expired grant reaches nothing"
        );
        grants.add(whole);
        assert!(!grants.cover("other", &["other"]));
        clock.advance_ms(61_000).unwrap();
        assert!(
            !grants.cover("HUB", &["Hub"]),
            "a grant runs out when the cloud's clock passes its expiry"
        );
    }
}
