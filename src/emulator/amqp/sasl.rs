//! SASL on the AMQP endpoint. Azure's Event Hubs and IoT Hub endpoints authenticate with CBS
//! (a SAS token put on `$cbs` after the connection opens), so SASL only has to let each client
//! through the mechanism it insists on: pyamqp (azure-eventhub) sends `ANONYMOUS`, uamqp
//! (azure-iot-hub, azure-eventhub's uamqp transport) sends `MSSBCBS`, and each fails when its
//! own is missing. Passing SASL grants nothing: until a token is put, a connection reaches
//! `$cbs` and nothing else (see `cbs`).

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

/// The mechanisms offered, in Azure's order.
const MECHANISMS: [&str; 4] = ["MSSBCBS", "PLAIN", "ANONYMOUS", "EXTERNAL"];

/// Lets a client through any offered mechanism; authorization is CBS's.
#[derive(Debug, Clone, Default)]
pub(crate) struct CbsOnlySasl;

impl SaslAcceptor for CbsOnlySasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(MECHANISMS.map(Symbol::from).to_vec())
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let offered = MECHANISMS.contains(&init.mechanism.as_str());
        SaslServerFrame::Outcome(SaslOutcome {
            code: if offered {
                SaslCode::Ok
            } else {
                SaslCode::Auth
            },
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
