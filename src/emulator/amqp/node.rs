//! What the endpoint's handlers share, below the router that calls them: the request and
//! reply messages of the `$cbs` and `$management` nodes (a request's string properties, a
//! reply as the clients read it), the hub an entity names, and the resource path a partition
//! link's (or a service node's) token must cover.

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use super::AmqpContext;
use crate::emulator::model::HubRecord;
use crate::protocol::event_hubs::keys;

/// A request or reply on `$cbs` / `$management`.
pub(crate) type NodeMessage = Message<Body<Value>>;

/// The path of a partition link's address, as a token's `sr` may name it.
pub(crate) fn link_resource<'a>(
    entity: &'a str,
    consumer_group: &'a str,
    partition: &'a str,
) -> [&'a str; 5] {
    [
        entity,
        "ConsumerGroups",
        consumer_group,
        "Partitions",
        partition,
    ]
}

/// The hub an entity name stands for (hub names are case-insensitive, as on Azure).
pub(crate) fn find_hub(context: &AmqpContext, entity: &str) -> Option<HubRecord> {
    context
        .cloud
        .hubs()
        .into_iter()
        .find(|h| h.name.eq_ignore_ascii_case(entity))
}

/// A string application property of a request.
pub(crate) fn property(message: &NodeMessage, key: &str) -> Option<String> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

/// A reply: the request's message id as its correlation id, the status as the clients read it.
pub(crate) fn reply(
    request: &NodeMessage,
    status: i32,
    description: &str,
    body: Value,
) -> NodeMessage {
    let mut properties = Properties::builder();
    if let Some(id) = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone())
    {
        properties = properties.correlation_id(id);
    }
    Message::builder()
        .properties(properties.build())
        .application_properties(
            ApplicationProperties::builder()
                .insert(keys::STATUS_CODE, SimpleValue::Int(status))
                .insert(
                    keys::STATUS_DESCRIPTION,
                    SimpleValue::String(description.into()),
                )
                .build(),
        )
        .body(Body::Value(AmqpValue(body)))
        .build()
}

/// The segments of a node's path, as a token's `sr` scope is compared with them.
pub(crate) fn node_segments(node: &str) -> Vec<&str> {
    node.split('/').filter(|s| !s.is_empty()).collect()
}
