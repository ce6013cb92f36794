//! AMQP values as both sides read them: message ids, application-property values and message
//! bodies turned into text and bytes, once, for the emulator's endpoint (C2D sends, events)
//! and dpskit's events reader and C2D client alike.

use fe2o3_amqp::types::definitions::ErrorCondition;
use fe2o3_amqp::types::messaging::{AmqpValue, Body, MessageId};
use fe2o3_amqp::types::primitives::Symbol;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

/// A message or correlation id as text: strings as they are, numbers in decimal, UUIDs in
/// their canonical form, binary ids in hex.
pub(crate) fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(uuid) => {
            let hex: String = uuid.as_inner().iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        MessageId::Binary(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// An error condition as its symbol (`amqp:not-found`, `com.microsoft:server-busy`...), the
/// text both sides compare.
pub(crate) fn condition_text(condition: &ErrorCondition) -> String {
    let symbol = match condition {
        ErrorCondition::AmqpError(e) => Symbol::from(e),
        ErrorCondition::ConnectionError(e) => Symbol::from(e),
        ErrorCondition::SessionError(e) => Symbol::from(e),
        ErrorCondition::LinkError(e) => Symbol::from(e),
        ErrorCondition::Custom(symbol) => symbol.clone(),
    };
    symbol.0
}

/// An application property's value as text (IoT Hub's property bags hold text).
pub(crate) fn simple_text(value: &SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        other => format!("{other:?}"),
    }
}

/// A message's body as bytes: data sections joined, a binary or string value as its bytes;
/// `Err` for a body IoT Hub would not carry (a sequence, another value).
pub(crate) fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, String> {
    match body {
        Body::Data(sections) => Ok(sections.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(AmqpValue(Value::Binary(bytes))) => Ok(bytes.to_vec()),
        Body::Value(AmqpValue(Value::String(text))) => Ok(text.clone().into_bytes()),
        Body::Empty => Ok(Vec::new()),
        _ => Err("The message body must be data, binary or a string.".into()),
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::primitives::Uuid;

    use super::*;

    #[test]
    fn ids_and_values_read_as_text_the_same_on_both_sides() {
        let uuid = Uuid::from([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
            0xde, 0xf0,
        ]);
        assert_eq!(
            message_id_text(&MessageId::Uuid(uuid)),
            "12345678-9abc-def0-1234-56789abcdef0"
        );
        assert_eq!(message_id_text(&MessageId::Ulong(7)), "7");
        assert_eq!(message_id_text(&MessageId::String("m-1".into())), "m-1");
        assert_eq!(simple_text(&SimpleValue::Int(-3)), "-3");
        assert_eq!(simple_text(&SimpleValue::Bool(true)), "true");
        assert_eq!(
            body_bytes(&Body::Value(AmqpValue(Value::String("hi".into())))).unwrap(),
            b"hi"
        );
        assert!(body_bytes(&Body::Value(AmqpValue(Value::Long(1)))).is_err());
    }
}
