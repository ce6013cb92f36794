//! The AMQP vocabulary of a hub's built-in Event Hub-compatible endpoint, as the official
//! consumers (`azure-eventhub`'s pyamqp and uamqp transports) speak it and IoT Hub answers:
//! node names, the CBS put-token and `$management` READ application properties, the partition
//! source address, the start-position selector filter, and the message annotations IoT Hub
//! adds. Built and parsed here only: the emulator's endpoint parses what dpskit's reader
//! writes, and both follow what the official clients were seen sending.
//!
//! No AMQP types here: the strings and the rules about them, so the layer stays free of the
//! AMQP crate and each side converts at its edge.

/// The claims-based-security node a client sends its SAS token to before attaching links.
pub(crate) const CBS_NODE: &str = "$cbs";
/// The node answering `READ` for the event hub and its partitions.
pub(crate) const MANAGEMENT_NODE: &str = "$management";
/// `operation` of a CBS token request.
pub(crate) const PUT_TOKEN: &str = "put-token";
/// `type` of a SAS token put to CBS.
pub(crate) const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// `operation` of a management request.
pub(crate) const READ: &str = "READ";
/// `type` of a management READ of the event hub.
pub(crate) const EVENT_HUB_TYPE: &str = "com.microsoft:eventhub";
/// `type` of a management READ of one partition.
pub(crate) const PARTITION_TYPE: &str = "com.microsoft:partition";
/// Application property keys of requests and answers on both nodes.
pub(crate) mod keys {
    /// The operation asked for.
    pub(crate) const OPERATION: &str = "operation";
    /// The token or resource type.
    pub(crate) const TYPE: &str = "type";
    /// The audience of a token, the event hub of a READ.
    pub(crate) const NAME: &str = "name";
    /// The partition of a partition READ.
    pub(crate) const PARTITION: &str = "partition";
    /// The SAS token a management request carries.
    pub(crate) const SECURITY_TOKEN: &str = "security_token";
    /// HTTP-like status of an answer (an int).
    pub(crate) const STATUS_CODE: &str = "status-code";
    /// Text of an answer's status.
    pub(crate) const STATUS_DESCRIPTION: &str = "status-description";
}

/// The descriptor (and filter-set key) of a start-position filter.
pub(crate) const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";

/// The members of `$management` READ answers (an AMQP map keyed by these strings).
pub(crate) mod fields {
    /// The event hub's name (string), in both answers.
    pub(crate) const NAME: &str = "name";
    /// What was read (`com.microsoft:eventhub` or `:partition`), in both answers.
    pub(crate) const TYPE: &str = "type";
    /// When the event hub was created (timestamp).
    pub(crate) const CREATED_AT: &str = "created_at";
    /// How many partitions it has (int).
    pub(crate) const PARTITION_COUNT: &str = "partition_count";
    /// Its partitions' ids (array of strings).
    pub(crate) const PARTITION_IDS: &str = "partition_ids";
    /// The partition read (string).
    pub(crate) const PARTITION: &str = "partition";
    /// The first retained event's sequence number (long; -1 when empty).
    pub(crate) const BEGIN_SEQUENCE_NUMBER: &str = "begin_sequence_number";
    /// The last enqueued event's sequence number (long; -1 when none was).
    pub(crate) const LAST_ENQUEUED_SEQUENCE_NUMBER: &str = "last_enqueued_sequence_number";
    /// The last enqueued event's offset (string).
    pub(crate) const LAST_ENQUEUED_OFFSET: &str = "last_enqueued_offset";
    /// When the last event was enqueued (timestamp).
    pub(crate) const LAST_ENQUEUED_TIME_UTC: &str = "last_enqueued_time_utc";
    /// Whether the partition holds no event (bool).
    pub(crate) const IS_PARTITION_EMPTY: &str = "is_partition_empty";
}

/// Error conditions Event Hubs closes or refuses a link with, beyond AMQP's own.
pub(crate) mod conditions {
    /// A reader with a higher owner level (epoch) took the partition, or this one's is lower.
    pub(crate) const RECEIVER_DISCONNECTED: &str = "com.microsoft:receiver-disconnected";
    /// The service is too busy for now.
    pub(crate) const SERVER_BUSY: &str = "com.microsoft:server-busy";
    /// An argument (a start position) is out of range.
    pub(crate) const ARGUMENT_OUT_OF_RANGE: &str = "com.microsoft:argument-out-of-range";
    /// An argument is invalid.
    pub(crate) const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";
    /// The operation timed out on the service's side.
    pub(crate) const TIMEOUT: &str = "com.microsoft:timeout";
}

/// The HTTP-like status a reader reports for a link error's `condition`, so a refusal reads as
/// the same kind of failure as the REST APIs' (401 credentials, 404 an unknown entity or
/// consumer group, 409 displaced or one reader too many, 429 busy, 400 a bad argument, 408 the
/// service timed out); `None` for a condition that says nothing about the request (the link or
/// connection broke), which stays a transport failure.
pub(crate) fn link_error_status(condition: &str) -> Option<u16> {
    Some(match condition {
        "amqp:unauthorized-access" => 401,
        "amqp:not-found" => 404,
        "amqp:link:stolen" | "amqp:resource-limit-exceeded" | conditions::RECEIVER_DISCONNECTED => {
            409
        }
        conditions::SERVER_BUSY => 429,
        "amqp:invalid-field"
        | "amqp:not-allowed"
        | "amqp:not-implemented"
        | conditions::ARGUMENT_OUT_OF_RANGE
        | conditions::ARGUMENT_ERROR => 400,
        conditions::TIMEOUT => 408,
        _ => return None,
    })
}

/// Message annotations Event Hubs puts on every event.
pub(crate) mod annotations {
    /// The event's sequence number in its partition (long).
    pub(crate) const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
    /// The event's offset in its partition (string).
    pub(crate) const OFFSET: &str = "x-opt-offset";
    /// When the partition received it (timestamp).
    pub(crate) const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
    /// The device that sent it (string).
    pub(crate) const DEVICE_ID: &str = "iothub-connection-device-id";
    /// The module that sent it, when one did (string).
    pub(crate) const MODULE_ID: &str = "iothub-connection-module-id";
    /// How the device authenticated, as IoT Hub's JSON (string).
    pub(crate) const AUTH_METHOD: &str = "iothub-connection-auth-method";
    /// The generation of the device identity that sent it (string).
    pub(crate) const AUTH_GENERATION_ID: &str = "iothub-connection-auth-generation-id";
    /// When the hub received it (timestamp).
    pub(crate) const HUB_ENQUEUED_TIME: &str = "iothub-enqueuedtime";
    /// `Telemetry` for device-to-cloud messages (string).
    pub(crate) const MESSAGE_SOURCE: &str = "iothub-message-source";
}

/// Where a partition receiver starts, as the consumer's `starting_position` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// After (or at) an offset: `-1` is the partition's start, `@latest` its end.
    Offset {
        /// The offset, as a string.
        offset: String,
        /// Whether the event at the offset itself is read.
        inclusive: bool,
    },
    /// After (or at) a sequence number.
    SequenceNumber {
        /// The sequence number.
        sequence_number: i64,
        /// Whether the event with that number itself is read.
        inclusive: bool,
    },
    /// Events enqueued after (or at) a time, in Unix milliseconds.
    EnqueuedTime {
        /// Unix milliseconds.
        unix_ms: i64,
        /// Whether events at exactly that time are read.
        inclusive: bool,
    },
}

/// The offset that means "from the partition's first event".
pub(crate) const START_OF_PARTITION: &str = "-1";
/// The offset that means "only events enqueued from now on".
pub(crate) const LATEST: &str = "@latest";

impl StartPosition {
    /// From the partition's first retained event.
    pub fn earliest() -> StartPosition {
        StartPosition::Offset {
            offset: START_OF_PARTITION.into(),
            inclusive: false,
        }
    }

    /// The selector filter's text, exactly as `azure-eventhub` writes it.
    pub fn selector(&self) -> String {
        let (field, value, inclusive) = match self {
            StartPosition::Offset { offset, inclusive } => ("offset", offset.clone(), *inclusive),
            StartPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => ("sequence-number", sequence_number.to_string(), *inclusive),
            StartPosition::EnqueuedTime { unix_ms, inclusive } => {
                ("enqueued-time", unix_ms.to_string(), *inclusive)
            }
        };
        let operator = if inclusive { ">=" } else { ">" };
        format!("amqp.annotation.x-opt-{field} {operator} '{value}'")
    }

    /// Reads a selector filter; `Err` says why it is not one this endpoint serves (a
    /// receiver asking for it is refused, never read from an assumed start).
    pub(crate) fn parse_selector(selector: &str) -> Result<StartPosition, String> {
        let refuse = || format!("unsupported start-position filter {selector:?}");
        let rest = selector
            .trim()
            .strip_prefix("amqp.annotation.x-opt-")
            .ok_or_else(refuse)?;
        let (field, rest) = rest.split_once(' ').ok_or_else(refuse)?;
        let (operator, value) = rest.trim_start().split_once(' ').ok_or_else(refuse)?;
        let inclusive = match operator {
            ">" => false,
            ">=" => true,
            _ => return Err(refuse()),
        };
        let value = value
            .trim()
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .filter(|v| !v.contains('\''))
            .ok_or_else(refuse)?;
        let number = || value.parse::<i64>().map_err(|_| refuse());
        match field {
            "offset" if value == LATEST || value == START_OF_PARTITION || number().is_ok() => {
                Ok(StartPosition::Offset {
                    offset: value.to_string(),
                    inclusive,
                })
            }
            "sequence-number" => Ok(StartPosition::SequenceNumber {
                sequence_number: number()?,
                inclusive,
            }),
            "enqueued-time" => Ok(StartPosition::EnqueuedTime {
                unix_ms: number()?,
                inclusive,
            }),
            _ => Err(refuse()),
        }
    }
}

/// A partition receiver's source address: `{event hub}/ConsumerGroups/{group}/Partitions/{id}`,
/// which the official clients prefix with `amqps://{host}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionAddress {
    /// The event hub (for IoT Hub's built-in endpoint, the hub's name).
    pub(crate) event_hub: String,
    /// The consumer group.
    pub(crate) consumer_group: String,
    /// The partition id.
    pub(crate) partition: String,
}

impl PartitionAddress {
    /// The address as dpskit's reader sends it (the official clients' form, host included).
    pub(crate) fn to_address(&self, host: &str) -> String {
        format!(
            "amqps://{host}/{}/ConsumerGroups/{}/Partitions/{}",
            self.event_hub, self.consumer_group, self.partition
        )
    }

    /// Reads a source address with or without its `amqps://{host}` prefix; `None` when it
    /// names no partition of a consumer group.
    pub(crate) fn parse(address: &str) -> Option<PartitionAddress> {
        let path = match address.split_once("://") {
            Some((_, rest)) => rest.split_once('/')?.1,
            None => address.trim_start_matches('/'),
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [event_hub, groups, group, partitions, partition]
                if groups.eq_ignore_ascii_case("ConsumerGroups")
                    && partitions.eq_ignore_ascii_case("Partitions")
                    && !event_hub.is_empty()
                    && !group.is_empty()
                    && !partition.is_empty() =>
            {
                Some(PartitionAddress {
                    event_hub: event_hub.to_string(),
                    consumer_group: group.to_string(),
                    partition: partition.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// The CBS audience of a token for an event hub: `sb://{host}/{event hub}`, as pyamqp names it.
pub(crate) fn event_hub_audience(host: &str, event_hub: &str) -> String {
    format!("sb://{host}/{event_hub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_written_as_the_official_consumer_writes_them_and_read_back() {
        // The strings azure-eventhub 5.15 was seen sending, one per kind of starting position.
        let seen = [
            (
                "amqp.annotation.x-opt-offset > '-1'",
                StartPosition::earliest(),
            ),
            (
                "amqp.annotation.x-opt-offset > '@latest'",
                StartPosition::Offset {
                    offset: LATEST.into(),
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-offset >= '0'",
                StartPosition::Offset {
                    offset: "0".into(),
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '2'",
                StartPosition::SequenceNumber {
                    sequence_number: 2,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1765000000000'",
                StartPosition::EnqueuedTime {
                    unix_ms: 1_765_000_000_000,
                    inclusive: false,
                },
            ),
        ];
        for (text, position) in seen {
            assert_eq!(position.selector(), text);
            assert_eq!(StartPosition::parse_selector(text), Ok(position));
        }
    }

    #[test]
    fn selectors_this_endpoint_does_not_serve_are_refused() {
        for bad in [
            "",
            "amqp.annotation.x-opt-offset < '5'",
            "amqp.annotation.x-opt-offset = '5'",
            "amqp.annotation.x-opt-offset > 5",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-sequence-number > 'x'",
            "amqp.annotation.x-opt-enqueued-time >= ''",
            "amqp.annotation.x-opt-partition-key > 'a'",
            "amqp.annotation.x-opt-offset > '1' OR 1=1",
            "amqp.annotation.x-opt-offset > '1'' OR ''1'",
            "sys.offset > '1'",
        ] {
            assert!(StartPosition::parse_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partition_addresses_are_read_with_or_without_the_host() {
        let address = PartitionAddress {
            event_hub: "my-hub".into(),
            consumer_group: "$Default".into(),
            partition: "3".into(),
        };
        let written = address.to_address("127.0.0.2");
        assert_eq!(
            written,
            "amqps://127.0.0.2/my-hub/ConsumerGroups/$Default/Partitions/3"
        );
        assert_eq!(PartitionAddress::parse(&written), Some(address.clone()));
        assert_eq!(
            PartitionAddress::parse("my-hub/consumergroups/$Default/partitions/3"),
            Some(address)
        );
        for bad in [
            "my-hub",
            "amqps://h/my-hub/ConsumerGroups/$Default",
            "amqps://h/my-hub/ConsumerGroups//Partitions/1",
            "amqps://h/my-hub/Groups/$Default/Partitions/1",
            "amqps://h/my-hub/ConsumerGroups/$Default/Partitions/1/extra",
            "amqps://h",
        ] {
            assert_eq!(PartitionAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn link_errors_read_as_the_rest_apis_statuses() {
        assert_eq!(link_error_status("amqp:unauthorized-access"), Some(401));
        assert_eq!(link_error_status("amqp:not-found"), Some(404));
        assert_eq!(
            link_error_status(conditions::RECEIVER_DISCONNECTED),
            Some(409)
        );
        assert_eq!(link_error_status("amqp:resource-limit-exceeded"), Some(409));
        assert_eq!(link_error_status(conditions::SERVER_BUSY), Some(429));
        assert_eq!(
            link_error_status(conditions::ARGUMENT_OUT_OF_RANGE),
            Some(400)
        );
        assert_eq!(link_error_status(conditions::TIMEOUT), Some(408));
        assert_eq!(link_error_status("amqp:connection:forced"), None);
        assert_eq!(link_error_status("amqp:link:detach-forced"), None);
    }
}
