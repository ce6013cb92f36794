//! SASL on the AMQP endpoint. Azure's Event Hubs and IoT Hub endpoints authenticate with CBS
//! (a SAS token put on `$cbs` after the connection opens), so SASL mostly has to let each
//! client through the mechanism it insists on: pyamqp (azure-eventhub) sends `ANONYMOUS`,
//! uamqp (azure-iot-hub, azure-eventhub's uamqp transport) sends `MSSBCBS`, and each fails
//! when its own is missing. Passing those grants nothing: until a token is put, a connection
//! reaches `$cbs` and nothing else (see `cbs`).
//!
//! IoT Hub also takes a service token in SASL `PLAIN` (its "SASL PLAIN" option, which the Azure
//! CLI's IoT extension and older service SDKs use): the username is
//! `{policyName}@sas.root.{hubName}` and the password a SAS token that policy signed. That token
//! is judged as a CBS one (`cbs::authorize`) and, once granted, covers the connection as if it
//! had been put on `$cbs`; a `PLAIN` whose username is not of that shape, or whose token is
//! refused, fails SASL (`auth`), as IoT Hub answers it.

use std::sync::Arc;

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use super::AmqpContext;
use super::cbs::{Grants, authorize};

/// The mechanisms offered, in Azure's order.
const MECHANISMS: [&str; 4] = ["MSSBCBS", "PLAIN", "ANONYMOUS", "EXTERNAL"];
/// The mechanism that carries a token.
const PLAIN: &str = "PLAIN";
/// What separates the policy from the hub in a `PLAIN` username.
const SERVICE_USERNAME_INFIX: &str = "@sas.root.";

/// SASL of one connection: any offered mechanism passes; `PLAIN` passes with a token that
/// authorizes, recorded in the connection's grants.
#[derive(Clone)]
pub(crate) struct TokenSasl {
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
}

impl std::fmt::Debug for TokenSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSasl")
    }
}

impl TokenSasl {
    /// The SASL of a connection whose grants are `grants`.
    pub(crate) fn new(context: Arc<AmqpContext>, grants: Arc<Grants>) -> Self {
        TokenSasl { context, grants }
    }

    /// Judges a `PLAIN` initial response (`authzid NUL username NUL password`).
    fn plain(&self, response: Option<&[u8]>) -> Result<(), String> {
        let response = response.ok_or("PLAIN without credentials")?;
        let mut parts = response.split(|b| *b == 0);
        let (Some(_authzid), Some(username), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("PLAIN credentials are not authzid NUL username NUL password".into());
        };
        let username = std::str::from_utf8(username).map_err(|_| "a username not in UTF-8")?;
        let password = std::str::from_utf8(password).map_err(|_| "a password not in UTF-8")?;
        let (policy, hub) = username
            .split_once(SERVICE_USERNAME_INFIX)
            .filter(|(policy, hub)| !policy.is_empty() && !hub.is_empty())
            .ok_or_else(|| {
                format!("the username {username:?} is not {{policy}}@sas.root.{{hub}}")
            })?;
        let grant = authorize(&self.context, password)?;
        if !grant.hub.eq_ignore_ascii_case(hub) {
            return Err(format!(
                "the token of policy {policy} was signed for another hub than {hub}"
            ));
        }
        self.grants.add(grant);
        Ok(())
    }
}

impl SaslAcceptor for TokenSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(MECHANISMS.map(Symbol::from).to_vec())
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let mechanism = init.mechanism.as_str();
        let passed = if mechanism == PLAIN {
            match self.plain(init.initial_response.as_ref().map(|b| &b[..])) {
                Ok(()) => true,
                Err(why) => {
                    log::info!("emulator: AMQP SASL PLAIN refused: {why}");
                    false
                }
            }
        } else {
            MECHANISMS.contains(&mechanism)
        };
        SaslServerFrame::Outcome(SaslOutcome {
            code: if passed { SaslCode::Ok } else { SaslCode::Auth },
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // No mechanism offered here challenges, so a response is out of turn.
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        })
    }
}
