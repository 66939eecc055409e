//! The RabbitMQ producer entry point (SPEC §7.2): signed `Submit` messages on `center.submit`
//! run as one-task queues; the result (or the refusal, with its code) goes to `reply_to`.
//!
//! A submission is signed like an HTTP call to the path `/submit`, over all its fields as text.
//! It is accepted as MessagePack or JSON by `content_type`, and answered in the same encoding.

use crate::api::queue::run_single_task_queue;
use crate::api::request::Params;
use crate::api::ApiState;
use crate::dispatch::submit_reply::reply_message;
use crate::error::ApiError;
use crate::store::ReplyAddress;
use actix_web::web;
use elves_shared::bus::{BusMessage, Consumer, Destination};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, Submit};

pub const SUBMIT_PATH: &str = "/submit";

pub async fn consume_submissions(mut consumer: Consumer, state: web::Data<ApiState>) {
    while let Some(delivery) = consumer.next().await {
        let message = delivery.message.clone();
        let address = message.reply_to.clone().map(|reply_to| ReplyAddress {
            reply_to,
            correlation_id: message.correlation_id.clone(),
            json: message.is_json(),
        });
        match handle(&state, &message, address.clone()).await {
            Ok(()) => state.metrics.record_call("submit", "ok"),
            Err(err) => {
                log::warn!("submit refused: {err}");
                state.metrics.record_call("submit", err.code());
                if let Some(address) = address {
                    let envelope = err.envelope();
                    let reply = reply_message(&envelope, &address);
                    if let Err(err) = state
                        .bus
                        .publish(&Destination::Queue(address.reply_to.clone()), reply)
                        .await
                    {
                        log::warn!(
                            "submit refusal not delivered to {}: {err}",
                            address.reply_to
                        );
                    }
                }
            }
        }
        // Settled either way: a refused submission must not come back.
        delivery.ack().await;
    }
}

async fn handle(
    state: &ApiState,
    message: &BusMessage,
    address: Option<ReplyAddress>,
) -> Result<(), ApiError> {
    let submit: Submit = if message.is_json() {
        wire::decode_json(&message.body)
    } else {
        wire::decode(&message.body)
    }
    .map_err(|err| ApiError::BadParam(format!("undecodable submission: {err}")))?;
    let signed = Params::from_owned(signed_fields(&submit));
    let now_s = i64::try_from(now_unix_ms() / 1000).unwrap_or(i64::MAX);
    let caller = state.authenticate(SUBMIT_PATH, &signed, now_s)?;
    let params = Params::from_owned(submit_params(&submit));
    run_single_task_queue(state, &caller, &params, address).await?;
    Ok(())
}

/// The submission's fields as the parameters of a v2 call (`agent` is the `ip`).
pub fn submit_params(submit: &Submit) -> Vec<(String, String)> {
    vec![
        ("auth_id".into(), submit.auth_id.clone()),
        ("timestamp".into(), submit.timestamp.to_string()),
        ("sign_type".into(), submit.sign_type.clone()),
        ("sign".into(), submit.sign.clone()),
        ("agent".into(), submit.agent.clone()),
        ("ip".into(), submit.agent.clone()),
        ("app".into(), submit.app.clone()),
        ("func".into(), submit.func.clone()),
        ("param".into(), submit.param.clone()),
        ("timeout".into(), submit.timeout.to_string()),
        ("proxy".into(), submit.proxy.clone()),
        ("mode".into(), submit.mode.clone()),
    ]
}

/// The fields that are signed: every field of the body except `sign` and `sign_type`.
pub fn signed_fields(submit: &Submit) -> Vec<(String, String)> {
    submit_params(submit)
        .into_iter()
        .filter(|(key, _)| key != "ip")
        .collect()
}
