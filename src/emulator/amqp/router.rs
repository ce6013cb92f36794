//! One AMQP session: each attach is routed by its role and address before it is accepted.
//!
//! - A client's sender to `$cbs` or `$management` is a request link; its receiver on the same
//!   node is where the replies go. The two are separate links, so replies are routed per node
//!   (pyamqp names both links' source and target after the node and sets no `reply-to`).
//! - A client's receiver on `[amqps://host/]{hub}/ConsumerGroups/{group}/Partitions/{n}` reads
//!   a partition, once a token put on `$cbs` covers the hub.
//! - A client's sender on `[amqps://host]/messages/devicebound` sends cloud-to-device messages,
//!   and its receiver on `[amqps://host]/messages/servicebound/feedback` (any case) takes their
//!   delivery feedback, once a token covers the node.
//! - Anything else is accepted only to be closed at once with the AMQP error saying why
//!   (`amqp:not-found`, `amqp:unauthorized-access`, `amqp:invalid-field`), which the clients
//!   raise as typed errors instead of waiting.
//!
//! Links where the client receives are answered pre-settled (snd-settle-mode `settled`):
//! pyamqp never settles events or replies, so unsettled deliveries would never complete. The
//! feedback node is the exception: its messages are locked until the client settles them, so
//! it is answered `unsettled`.
//! Links where the client sends are answered rcv-settle-mode `first`, so the endpoint's
//! accepting disposition settles the delivery (uamqp asks for `second` and then waits forever).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::{
    LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SupportedReceiverSettleModes,
    SupportedSenderSettleModes,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, TargetArchetype};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::sync::mpsc;

use super::AmqpContext;
use super::cbs::Grants;
use crate::emulator::model::HubRecord;
use crate::emulator::store::EventPosition;
use crate::protocol::c2d::{DEVICEBOUND_NODE, FEEDBACK_NODE};
use crate::protocol::event_hubs::{self, PartitionAddress};

use super::node::{NodeMessage, find_hub, link_resource, node_segments};

/// Replies waiting for the client's reply link, per node; requests wait while it is full.
const REPLY_QUEUE: usize = 16;

/// The request/response nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    Cbs,
    Management,
}

/// The largest message a client may send (a token, a READ, a C2D message of 64 KB with its
/// properties): a larger one detaches its link (`amqp:link:message-size-exceeded`) as its
/// frames arrive, so no client makes the endpoint buffer more.
const MAX_INCOMING_MESSAGE: u64 = 256 * 1024;

/// The link property carrying a reader's epoch (owner level).
const EPOCH_PROPERTY: &str = "com.microsoft:epoch";

/// The capability asking for the partition's last event with each event
/// (`track_last_enqueued_event_properties`).
const RUNTIME_METRIC: &str = "com.microsoft:enable-receiver-runtime-metric";

/// The consumer group every hub has.
const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// What an attach asks for, read before it is accepted.
enum Route {
    Requests(Node),
    Replies(Node),
    Partition {
        entity: String,
        consumer_group: String,
        partition: String,
        position: Result<EventPosition, String>,
        /// `com.microsoft:epoch`, the client's owner level.
        epoch: Option<i64>,
        /// Whether the client asked for the partition's last event with each event.
        runtime_metric: bool,
    },
    /// A client's sender of C2D messages, on the hub host its address names (if any).
    C2d(Option<String>),
    /// A client's receiver of C2D delivery feedback, on the hub host its address names (if any).
    Feedback(Option<String>),
    Unknown(String),
}

/// The host of an address with an `amqps://host/` prefix (uamqp writes it without a port).
fn host_of(address: &str) -> Option<String> {
    address
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .map(str::to_string)
}

/// Whether a path names a service node (`/messages/devicebound`...): its segments, any case.
fn is_node(path: &str, node: &str) -> bool {
    path.trim_start_matches('/')
        .eq_ignore_ascii_case(node.trim_start_matches('/'))
}

/// The path of an address without its `amqps://host/` prefix, if any.
fn path_of(address: &str) -> &str {
    match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    }
}

fn node_of(path: &str) -> Option<Node> {
    match path.rsplit('/').next() {
        Some(event_hubs::CBS_NODE) => Some(Node::Cbs),
        Some(event_hubs::MANAGEMENT_NODE) => Some(Node::Management),
        _ => None,
    }
}

impl Route {
    fn of(attach: &fe2o3_amqp::types::performatives::Attach) -> Route {
        match attach.role {
            // The client receives: the source is ours.
            Role::Receiver => {
                let source = attach.source.as_deref();
                let address = source
                    .and_then(|s| s.address.as_deref())
                    .unwrap_or_default();
                let path = path_of(address);
                if let Some(node) = node_of(path) {
                    return Route::Replies(node);
                }
                if is_node(path, FEEDBACK_NODE) {
                    return Route::Feedback(host_of(address));
                }
                match PartitionAddress::parse(address) {
                    Some(PartitionAddress {
                        event_hub,
                        consumer_group,
                        partition,
                    }) => Route::Partition {
                        entity: event_hub,
                        consumer_group,
                        partition,
                        position: super::selector::start_position(
                            source.and_then(|s| s.filter.as_ref()),
                        ),
                        epoch: attach.properties.as_ref().and_then(|p| {
                            match p.get(&Symbol::from(EPOCH_PROPERTY)) {
                                Some(Value::Long(epoch)) => Some(*epoch),
                                _ => None,
                            }
                        }),
                        runtime_metric: attach.desired_capabilities.as_ref().is_some_and(
                            |wanted| wanted.0.iter().any(|c| c.as_str() == RUNTIME_METRIC),
                        ),
                    },
                    None => Route::Unknown(address.to_string()),
                }
            }
            // The client sends: the target is ours.
            Role::Sender => {
                let address = match attach.target.as_deref() {
                    Some(TargetArchetype::Target(target)) => {
                        target.address.clone().unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let path = path_of(&address);
                if let Some(node) = node_of(path) {
                    return Route::Requests(node);
                }
                if is_node(path, DEVICEBOUND_NODE) {
                    return Route::C2d(host_of(&address));
                }
                Route::Unknown(address)
            }
        }
    }
}

/// A node's reply channel: request links queue replies on the sending half whatever reply
/// link is open; the reply link open at the time holds the receiving half (a later one takes
/// it over once the earlier one is gone), so a reply waits for a reply link rather than being
/// routed at attach time to one that may close.
type ReplyRoute = (
    mpsc::Sender<NodeMessage>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<NodeMessage>>>,
);

/// The reply channel of each node in one session.
#[derive(Default)]
struct ReplyRoutes(Mutex<HashMap<Node, ReplyRoute>>);

impl ReplyRoutes {
    fn route(&self, node: Node) -> ReplyRoute {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(node)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(REPLY_QUEUE);
                (tx, Arc::new(tokio::sync::Mutex::new(rx)))
            })
            .clone()
    }
}

fn refusal(condition: AmqpError, description: String) -> definitions::Error {
    definitions::Error::new(condition, Some(description), None)
}

/// Serves one session until it ends.
pub(crate) async fn session(
    mut session: ListenerSessionHandle,
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
) {
    let senders = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .build();
    let receivers = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .max_message_size(MAX_INCOMING_MESSAGE)
        .build();
    // Feedback is settled by the client (or offered again), whatever mode it asks for.
    let feedback_senders = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Unsettled)
        .fallback_sender_settle_mode(SenderSettleMode::Unsettled)
        .build();
    let routes = ReplyRoutes::default();
    while let Some(attach) = session.next_incoming_attach().await {
        let route = Route::of(&attach);
        let accepted = match (&route, &attach.role) {
            (Route::Feedback(_), Role::Receiver) => {
                feedback_senders
                    .accept_incoming_attach(attach, &mut session)
                    .await
            }
            (_, Role::Receiver) => senders.accept_incoming_attach(attach, &mut session).await,
            (_, Role::Sender) => receivers.accept_incoming_attach(attach, &mut session).await,
        };
        let link = match accepted {
            Ok(link) => link,
            Err(e) => {
                log::info!("emulator: AMQP attach refused: {e}");
                continue;
            }
        };
        match (route, link) {
            (Route::Requests(node), LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(requests(
                    receiver,
                    node,
                    routes.route(node).0,
                    context.clone(),
                    grants.clone(),
                ));
            }
            (Route::Replies(node), LinkEndpoint::Sender(sender)) => {
                tokio::spawn(replies(sender, routes.route(node).1));
            }
            (
                Route::Partition {
                    entity,
                    consumer_group,
                    partition,
                    position,
                    epoch,
                    runtime_metric,
                },
                LinkEndpoint::Sender(sender),
            ) => {
                let reader =
                    partition_link(&context, &grants, &entity, &consumer_group, &partition)
                        .and_then(|(hub, partition)| {
                            let position =
                                position.map_err(|why| refusal(AmqpError::InvalidField, why))?;
                            let key = (
                                hub.name.to_ascii_lowercase(),
                                consumer_group.to_ascii_lowercase(),
                                partition,
                            );
                            let membership = context.readers.join(key, epoch)?;
                            Ok((hub, partition, position, membership))
                        });
                match reader {
                    Ok((hub, partition, position, membership)) => {
                        let reading = super::partition::Reading {
                            entity,
                            consumer_group,
                            hub,
                            partition,
                            position,
                            membership,
                            runtime_metric,
                        };
                        tokio::spawn(super::partition::stream(
                            sender,
                            context.clone(),
                            grants.clone(),
                            reading,
                        ));
                    }
                    Err(error) => close(LinkEndpoint::Sender(sender), error),
                }
            }
            (Route::Feedback(host), LinkEndpoint::Sender(sender)) => {
                match service_hub(&context, &grants, host.as_deref(), FEEDBACK_NODE) {
                    Ok(hub) => {
                        tokio::spawn(super::feedback::offer(
                            sender,
                            context.clone(),
                            grants.clone(),
                            hub,
                        ));
                    }
                    Err(error) => close(LinkEndpoint::Sender(sender), error),
                }
            }
            (Route::C2d(host), LinkEndpoint::Receiver(receiver)) => {
                match service_hub(&context, &grants, host.as_deref(), DEVICEBOUND_NODE) {
                    Ok(hub) => {
                        tokio::spawn(super::c2d::receive(
                            receiver,
                            context.clone(),
                            grants.clone(),
                            hub,
                        ));
                    }
                    Err(error) => close(LinkEndpoint::Receiver(receiver), error),
                }
            }
            (Route::Unknown(address), link) => close(
                link,
                refusal(
                    AmqpError::NotFound,
                    format!("The messaging entity '{address}' could not be found."),
                ),
            ),
            (_, link) => close(
                link,
                refusal(
                    AmqpError::NotAllowed,
                    "The link's role does not match its address.".into(),
                ),
            ),
        }
    }
    let _ = session.on_end().await;
}

/// Closes a link with an error, on its own task (the session goes on with other attaches).
fn close(link: LinkEndpoint, error: definitions::Error) {
    log::info!(
        "emulator: AMQP link refused: {}",
        error.description.as_deref().unwrap_or_default()
    );
    tokio::spawn(async move {
        let _ = match link {
            LinkEndpoint::Sender(sender) => sender.close_with_error(error).await,
            LinkEndpoint::Receiver(receiver) => receiver.close_with_error(error).await,
        };
    });
}

/// The hub and partition a partition link reads, once its consumer group and partition exist
/// and a token covers the hub.
fn partition_link(
    context: &AmqpContext,
    grants: &Grants,
    entity: &str,
    consumer_group: &str,
    partition: &str,
) -> Result<(HubRecord, u32), definitions::Error> {
    let not_found = |what: String| refusal(AmqpError::NotFound, what);
    let hub = find_hub(context, entity).ok_or_else(|| {
        not_found(format!(
            "The messaging entity '{entity}' could not be found."
        ))
    })?;
    // Checked before anything about the hub is told. The clients' tokens name the hub or the
    // link's own address (`sb://host/{hub}/ConsumerGroups/{group}/Partitions/{n}`).
    if !grants.cover(&hub.name, &link_resource(entity, consumer_group, partition)) {
        return Err(refusal(
            AmqpError::UnauthorizedAccess,
            format!(
                "Unauthorized access to '{entity}': put a token with ServiceConnect on $cbs first."
            ),
        ));
    }
    let group_exists = consumer_group.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP)
        || hub
            .events
            .consumer_groups
            .iter()
            .any(|g| g.eq_ignore_ascii_case(consumer_group));
    if !group_exists {
        return Err(not_found(format!(
            "The consumer group '{consumer_group}' does not exist in '{entity}'."
        )));
    }
    let partition = partition
        .parse::<u32>()
        .ok()
        .filter(|p| *p < hub.events.partition_count)
        .ok_or_else(|| {
            not_found(format!(
                "The partition '{partition}' does not exist in '{entity}' ({} partitions).",
                hub.events.partition_count
            ))
        })?;
    Ok((hub, partition))
}

/// The hub a C2D sender or feedback receiver reaches: the one its address names (its host, as
/// uamqp writes it, without a port) or, with no host, the one hub this connection's tokens
/// cover; refused until a token covers the node.
fn service_hub(
    context: &AmqpContext,
    grants: &Grants,
    host: Option<&str>,
    node: &str,
) -> Result<HubRecord, definitions::Error> {
    let segments = node_segments(node);
    let covered = |hub: &HubRecord| grants.cover(&hub.name, &segments);
    let candidates: Vec<HubRecord> = context
        .cloud
        .hubs()
        .into_iter()
        .filter(|h| host.is_none_or(|host| h.host_name.eq_ignore_ascii_case(host)))
        .filter(covered)
        .collect();
    match candidates.as_slice() {
        [hub] => Ok(hub.clone()),
        [] => Err(refusal(
            AmqpError::UnauthorizedAccess,
            format!(
                "Unauthorized access to {node}: put a token with ServiceConnect on $cbs first."
            ),
        )),
        _ => Err(refusal(
            AmqpError::InvalidField,
            "The address names no hub host and the tokens cover several hubs.".into(),
        )),
    }
}

/// Answers the requests of one request link, in order.
async fn requests(
    mut receiver: Receiver,
    node: Node,
    replies: mpsc::Sender<NodeMessage>,
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(e) => {
                log::debug!("emulator: AMQP request link ended: {e}");
                return;
            }
        };
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
        let request = delivery.into_message();
        let answer = match node {
            Node::Cbs => super::cbs::put_token(&context, &grants, &request),
            Node::Management => super::management::answer(&context, &grants, &request),
        };
        if replies.send(answer).await.is_err() {
            return;
        }
    }
}

/// Sends a node's replies on the client's reply link, until it detaches.
async fn replies(
    mut sender: Sender,
    replies: Arc<tokio::sync::Mutex<mpsc::Receiver<NodeMessage>>>,
) {
    let mut replies = tokio::select! {
        replies = replies.lock_owned() => replies,
        _ = sender.on_detach() => return,
    };
    loop {
        let message = tokio::select! {
            message = replies.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = sender.on_detach() => {
                let _ = sender.close().await;
                return;
            }
        };
        if let Err(e) = sender.send(message).await {
            log::debug!("emulator: AMQP reply link ended: {e}");
            return;
        }
    }
}
