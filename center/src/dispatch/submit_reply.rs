//! The answer to a producer that submitted a task on `center.submit` (SPEC §7.2): sent by
//! whichever center settles the task, in the encoding the submission came in.

use crate::store::ReplyAddress;
use elves_shared::bus::{BusMessage, CONTENT_TYPE_JSON};
use elves_shared::wire::{self, kind, Envelope};
use serde::Serialize;

pub fn reply_message<T: Serialize>(envelope: &Envelope<T>, address: &ReplyAddress) -> BusMessage {
    let mut message = if address.json {
        let mut message = BusMessage::msgpack(
            kind::SUBMIT_REPLY,
            serde_json::to_vec(envelope).unwrap_or_default(),
        );
        message.content_type = CONTENT_TYPE_JSON.to_string();
        message
    } else {
        BusMessage::msgpack(kind::SUBMIT_REPLY, wire::encode(envelope))
    };
    message.correlation_id = address.correlation_id.clone();
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(json: bool) -> ReplyAddress {
        ReplyAddress {
            reply_to: "producer.replies".into(),
            correlation_id: Some("c-1".into()),
            json,
        }
    }

    #[test]
    fn a_reply_comes_back_in_the_submission_encoding() {
        let envelope = Envelope::ok("done".to_string());
        let json = reply_message(&envelope, &address(true));
        assert!(json.is_json());
        let decoded: Envelope<String> = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(decoded.result, "done");
        let packed = reply_message(&envelope, &address(false));
        assert!(!packed.is_json());
        let decoded: Envelope<String> = wire::decode(&packed.body).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(packed.correlation_id.as_deref(), Some("c-1"));
    }
}
