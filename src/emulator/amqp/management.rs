//! The `$management` node: READ of `com.microsoft:eventhub` (the hub's events endpoint: name,
//! creation time, partitions) and `com.microsoft:partition` (a partition's first and last
//! events), as the Event Hubs clients' `get_eventhub_properties` and
//! `get_partition_properties` ask for them. A request carries its own SAS token
//! (`security_token`); one put on `$cbs` for the hub serves as well. Unauthorized requests
//! are answered 401 before anything about the entity is told; unknown entities and
//! partitions 404.

use fe2o3_amqp::types::primitives::{Array, OrderedMap, Timestamp, Value};

use super::AmqpContext;
use super::cbs::{Grants, authorize};
use super::node::{NodeMessage, find_hub, property, reply};
use crate::protocol::event_hubs::{self, fields, keys};

/// Answers one `$management` request.
pub(crate) fn answer(context: &AmqpContext, grants: &Grants, request: &NodeMessage) -> NodeMessage {
    let status = |code: i32, description: &str| reply(request, code, description, Value::Null);
    if property(request, keys::OPERATION).as_deref() != Some(event_hubs::READ) {
        return status(400, "The $management node serves READ only.");
    }
    let Some(entity) = property(request, keys::NAME) else {
        return status(400, "The request names no entity (name).");
    };
    let covered = |hub: &str| {
        grants.cover(hub, &[&entity])
            || property(request, "security_token")
                .and_then(|token| authorize(context, &token).ok())
                .is_some_and(|grant| grant.covers(hub, &[&entity], context.cloud.clock().now()))
    };
    let hub = match find_hub(context, &entity) {
        Some(hub) if covered(&hub.name) => hub,
        _ => {
            return status(
                401,
                &format!("Unauthorized access to '{entity}': the token does not cover it."),
            );
        }
    };
    let text = |s: &str| Value::String(s.to_string());
    let mut body = OrderedMap::new();
    match property(request, keys::TYPE).as_deref() {
        Some(event_hubs::EVENT_HUB_TYPE) => {
            let ids: Vec<Value> = (0..hub.events.partition_count)
                .map(|p| Value::String(p.to_string()))
                .collect();
            body.insert(text(fields::NAME), text(&hub.name));
            body.insert(text(fields::TYPE), text(event_hubs::EVENT_HUB_TYPE));
            body.insert(
                text(fields::CREATED_AT),
                Value::Timestamp(Timestamp::from_milliseconds(
                    hub.created.saturating_mul(1000),
                )),
            );
            body.insert(
                text(fields::PARTITION_COUNT),
                Value::Int(i32::try_from(hub.events.partition_count).unwrap_or(i32::MAX)),
            );
            body.insert(text(fields::PARTITION_IDS), Value::Array(Array::from(ids)));
        }
        Some(event_hubs::PARTITION_TYPE) => {
            let Some(asked) = property(request, keys::PARTITION) else {
                return status(400, "The request names no partition.");
            };
            let Some(partition) = asked
                .parse::<u32>()
                .ok()
                .filter(|p| *p < hub.events.partition_count)
            else {
                return status(
                    404,
                    &format!("The partition '{asked}' does not exist in '{entity}'."),
                );
            };
            let summary = match context.store.partition_summary(
                &hub.host_name.to_ascii_lowercase(),
                partition,
                hub.events.retained_since(context.cloud.clock().now()),
            ) {
                Ok(summary) => summary,
                Err(e) => {
                    log::error!("emulator: reading partition {partition} of {entity}: {e}");
                    return status(500, "The partition could not be read.");
                }
            };
            // An empty partition reads as the Event Hubs clients expect one: -1 throughout; one
            // whose events are all past the retention is empty with its last event still told.
            let (last_sequence, last_offset, last_time) = summary.last.unwrap_or((-1, -1, 0));
            body.insert(text(fields::NAME), text(&hub.name));
            body.insert(text(fields::TYPE), text(event_hubs::PARTITION_TYPE));
            body.insert(text(fields::PARTITION), text(&partition.to_string()));
            body.insert(
                text(fields::BEGIN_SEQUENCE_NUMBER),
                Value::Long(summary.begin_sequence.unwrap_or(-1)),
            );
            body.insert(
                text(fields::LAST_ENQUEUED_SEQUENCE_NUMBER),
                Value::Long(last_sequence),
            );
            body.insert(
                text(fields::LAST_ENQUEUED_OFFSET),
                text(&last_offset.to_string()),
            );
            body.insert(
                text(fields::LAST_ENQUEUED_TIME_UTC),
                Value::Timestamp(Timestamp::from_milliseconds(last_time)),
            );
            body.insert(
                text(fields::IS_PARTITION_EMPTY),
                Value::Bool(summary.begin_sequence.is_none()),
            );
        }
        _ => return status(400, "Unknown READ type."),
    }
    reply(request, 200, "OK", Value::Map(body))
}
