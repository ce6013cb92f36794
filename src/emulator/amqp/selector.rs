//! The start position of a partition reader, from its attach's source filter: the Event Hubs
//! clients send one `apache.org:selector-filter:string` whose value is an SQL-like condition
//! on a message annotation, as Azure's endpoint understands it:
//!
//! | client's starting position | selector |
//! |---|---|
//! | `"-1"` (the default): from the start | `amqp.annotation.x-opt-offset > '-1'` |
//! | `"@latest"`: only new events | `amqp.annotation.x-opt-offset > '@latest'` |
//! | an offset (string) | `amqp.annotation.x-opt-offset > '100'` (`>=` when inclusive) |
//! | a sequence number (int) | `amqp.annotation.x-opt-sequence-number > '2'` |
//! | a datetime | `amqp.annotation.x-opt-enqueued-time > '<Unix ms>'` |
//!
//! Anything else is refused (the link is closed with `amqp:invalid-field`), never read as
//! "from the start", so a client relying on a form the emulator does not know finds out.

use fe2o3_amqp::types::messaging::FilterSet;
use fe2o3_amqp::types::primitives::Value;

use crate::emulator::store::EventPosition;
use crate::protocol::event_hubs::{LATEST, SELECTOR_FILTER, START_OF_PARTITION, StartPosition};

/// The start position a link's filter asks for; no selector reads from the start.
pub(crate) fn start_position(filter: Option<&FilterSet>) -> Result<EventPosition, String> {
    let Some(filter) = filter else {
        return Ok(EventPosition::Start);
    };
    let Some((_, value)) = filter
        .iter()
        .find(|(key, _)| key.as_str() == SELECTOR_FILTER)
    else {
        return Ok(EventPosition::Start);
    };
    let expression = match value {
        Value::Described(described) => match &described.value {
            Value::String(s) => s.as_str(),
            other => return Err(format!("the selector filter is not a string: {other:?}")),
        },
        Value::String(s) => s.as_str(),
        other => return Err(format!("the selector filter is not a string: {other:?}")),
    };
    parse(expression)
}

/// Reads one selector (`protocol::event_hubs` parses it, as dpskit's reader writes it) as a
/// position in the store: `-1` is the start, `@latest` the end.
pub(crate) fn parse(expression: &str) -> Result<EventPosition, String> {
    Ok(match StartPosition::parse_selector(expression)? {
        StartPosition::Offset { offset, .. } if offset == START_OF_PARTITION => {
            EventPosition::Start
        }
        StartPosition::Offset { offset, .. } if offset == LATEST => EventPosition::End,
        StartPosition::Offset { offset, inclusive } => EventPosition::Offset {
            offset: offset
                .parse()
                .map_err(|_| format!("unsupported selector filter: {expression:?}"))?,
            inclusive,
        },
        StartPosition::SequenceNumber {
            sequence_number,
            inclusive,
        } => EventPosition::Sequence {
            sequence: sequence_number,
            inclusive,
        },
        StartPosition::EnqueuedTime { unix_ms, inclusive } => EventPosition::Enqueued {
            millis: unix_ms,
            inclusive,
        },
    })
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::primitives::{OrderedMap, Symbol};
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;

    use super::*;

    #[test]
    fn every_starting_position_the_event_hubs_client_sends_parses() {
        let cases = [
            ("amqp.annotation.x-opt-offset > '-1'", EventPosition::Start),
            ("amqp.annotation.x-opt-offset >= '-1'", EventPosition::Start),
            (
                "amqp.annotation.x-opt-offset > '@latest'",
                EventPosition::End,
            ),
            (
                "amqp.annotation.x-opt-offset > '100'",
                EventPosition::Offset {
                    offset: 100,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-offset >= '0'",
                EventPosition::Offset {
                    offset: 0,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '2'",
                EventPosition::Sequence {
                    sequence: 2,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number >= '2'",
                EventPosition::Sequence {
                    sequence: 2,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1765112345678'",
                EventPosition::Enqueued {
                    millis: 1_765_112_345_678,
                    inclusive: false,
                },
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(parse(selector), Ok(expected), "{selector}");
        }
    }

    #[test]
    fn what_the_endpoint_does_not_understand_is_refused_not_read_from_the_start() {
        for selector in [
            "",
            "amqp.annotation.x-opt-offset",
            "amqp.annotation.x-opt-offset = '5'",
            "amqp.annotation.x-opt-offset < '5'",
            "amqp.annotation.x-opt-offset > 5",
            "amqp.annotation.x-opt-offset > 'five'",
            "amqp.annotation.x-opt-sequence-number > '@latest'",
            "amqp.annotation.x-opt-partition-key > '1'",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-offset > '1' OR 1=1",
        ] {
            assert!(parse(selector).is_err(), "{selector:?} was accepted");
        }
    }

    #[test]
    fn the_filter_set_is_read_as_the_clients_send_it() {
        assert_eq!(start_position(None), Ok(EventPosition::Start));
        let mut filter = OrderedMap::new();
        filter.insert(
            Symbol::from(SELECTOR_FILTER),
            Value::Described(Box::new(Described {
                descriptor: Descriptor::Name(Symbol::from(SELECTOR_FILTER)),
                value: Value::String("amqp.annotation.x-opt-sequence-number >= '7'".into()),
            })),
        );
        assert_eq!(
            start_position(Some(&filter)),
            Ok(EventPosition::Sequence {
                sequence: 7,
                inclusive: true
            })
        );
        filter.insert(
            Symbol::from(SELECTOR_FILTER),
            Value::Described(Box::new(Described {
                descriptor: Descriptor::Name(Symbol::from(SELECTOR_FILTER)),
                value: Value::Long(7),
            })),
        );
        assert!(start_position(Some(&filter)).is_err());
    }
}
