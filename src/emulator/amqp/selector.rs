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

/// The filter's key and descriptor name.
pub(crate) const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

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

/// Parses one selector: `amqp.annotation.<x-opt-offset | x-opt-sequence-number |
/// x-opt-enqueued-time> <'>' | '>='> '<value>'`.
pub(crate) fn parse(expression: &str) -> Result<EventPosition, String> {
    let refuse = || format!("unsupported selector filter: {expression:?}");
    let mut words = expression.split_whitespace();
    let (Some(field), Some(operator), Some(quoted), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(refuse());
    };
    let inclusive = match operator {
        ">" => false,
        ">=" => true,
        _ => return Err(refuse()),
    };
    let value = quoted
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(refuse)?;
    let number = || value.parse::<i64>().map_err(|_| refuse());
    let field = field.strip_prefix("amqp.annotation.").ok_or_else(refuse)?;
    match field {
        "x-opt-offset" => match value {
            "-1" => Ok(EventPosition::Start),
            "@latest" => Ok(EventPosition::End),
            _ => Ok(EventPosition::Offset {
                offset: number()?,
                inclusive,
            }),
        },
        "x-opt-sequence-number" => Ok(EventPosition::Sequence {
            sequence: number()?,
            inclusive,
        }),
        "x-opt-enqueued-time" => Ok(EventPosition::Enqueued {
            millis: number()?,
            inclusive,
        }),
        _ => Err(refuse()),
    }
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
