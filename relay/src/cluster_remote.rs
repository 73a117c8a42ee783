//! A room another relay owns, served on this relay: each of its connections gets a link to the
//! owner (the contract is in [`crate::cluster::link`]), and document API requests are forwarded.
//! When the owner closes a link because it lost the room (1013), or cannot be reached, this
//! relay forgets who owns the room; the next connection looks at the lease again (and takes the
//! room if the lease is gone).
//!
//! This module does not know the registry that starts it: it hears about its entry through
//! [`RegistryEntry`], so the module graph has no cycle.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use crdt::protocol::{
    encode_query_awareness, encode_save_request, encode_sync_step1, encode_sync_step2,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{Access, Principal};
use crate::clock::sleep_until_opt;
use crate::close::CloseReason;
use crate::cluster::Cluster;
use crate::cluster::link::{
    CTL_CLOSE, CTL_FRAME, CTL_LEAVE, CTL_PING, CTL_STATELESS, H_ACCESS, H_API, H_CLOSE, H_CTL,
    H_ERROR, H_FROM, H_LINK, H_PRINCIPAL, H_ROOM, H_SEQ, H_STATELESS, LinkTimes, REQUEST_TIMEOUT,
    api_subject, header, link_headers, missed_messages, open_subject, to_forwarder_subject,
    to_owner_subject,
};
use crate::cluster::names::node_token;
use crate::outbound::{ConnHandle, Delivery};
use crate::room::core::ApiUpdateError;
use crate::room::inbound::Inbound;
use crate::room::{ConnId, RoomCommand, RoomSettings};

/// The registry's entry for a remote room, as the remote room sees it.
pub(crate) trait RegistryEntry {
    /// Takes the entry out of the registry unless a command is on its way to it; whether it did.
    fn remove_if_idle(&self) -> bool;
    /// Takes the entry out of the registry.
    fn remove(&self);
}

/// The messages of one client frame as link commands, in order: the y-websocket messages
/// encoded again as frames (several messages per frame is what the protocol allows; updates and
/// awareness keep their original bytes), each Hocuspocus stateless message on its own.
fn link_commands(messages: &[Inbound]) -> Vec<LinkCmd> {
    let mut commands = Vec::new();
    let mut frame = BytesMut::new();
    for message in messages {
        match message {
            Inbound::SyncStep1(sv) => frame.extend_from_slice(&encode_sync_step1(sv)),
            Inbound::SyncStep2(update) => frame.extend_from_slice(&encode_sync_step2(update)),
            Inbound::Update { message, .. } | Inbound::Awareness { message, .. } => {
                frame.extend_from_slice(message);
            }
            Inbound::QueryAwareness => frame.extend_from_slice(&encode_query_awareness()),
            Inbound::SaveRequest(id) => frame.extend_from_slice(&encode_save_request(*id)),
            Inbound::Stateless(payload) => {
                if !frame.is_empty() {
                    commands.push(LinkCmd::frame(frame.split().freeze()));
                }
                commands.push(LinkCmd::stateless(payload.clone()));
            }
        }
    }
    if !frame.is_empty() {
        commands.push(LinkCmd::frame(frame.freeze()));
    }
    commands
}

/// What the remote room task tells one link.
#[derive(Debug, PartialEq, Eq)]
enum LinkCmd {
    /// A numbered message to the owner: [`CTL_FRAME`] or [`CTL_STATELESS`].
    Send {
        ctl: &'static str,
        payload: Bytes,
    },
    Leave,
}

impl LinkCmd {
    fn frame(payload: Bytes) -> Self {
        LinkCmd::Send {
            ctl: CTL_FRAME,
            payload,
        }
    }

    fn stateless(payload: Bytes) -> Self {
        LinkCmd::Send {
            ctl: CTL_STATELESS,
            payload,
        }
    }
}

/// How a link ended, as the remote room task learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEnd {
    /// The client left, or this link alone broke (a gap, a slow reader).
    Normal,
    /// The owner cannot be reached or no longer owns the room: forget it.
    OwnerGone,
}

/// Serves a room another relay (`owner`) owns: each joining connection gets a link to the owner,
/// API requests are forwarded. Returns when the room is idle and left the registry, or when the
/// owner is gone (then the entry is removed and every link closed with 1013).
pub(crate) async fn serve_remote(
    cluster: Arc<Cluster>,
    settings: &RoomSettings,
    entry: &impl RegistryEntry,
    name: &Arc<str>,
    owner: String,
    rx: &mut mpsc::Receiver<RoomCommand>,
    pending: &AtomicUsize,
) {
    tracing::info!(%owner, "another relay owns the room; forwarding to it");
    let idle = settings.idle_unload;
    let delivery = Arc::new(Delivery::new(
        settings.outbound_queue_bytes,
        settings.slow_reader_grace,
    ));
    let mut links: HashMap<ConnId, mpsc::UnboundedSender<LinkCmd>> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(ConnId, LinkEnd)>();
    let mut empty_since = Some(Instant::now());
    loop {
        let unload_at = if links.is_empty() {
            empty_since.map(|since| {
                if cluster.shutdown_started() {
                    Instant::now()
                } else {
                    since + idle
                }
            })
        } else {
            None
        };
        tokio::select! {
            command = rx.recv() => {
                let Some(command) = command else { break };
                if command.was_counted() {
                    pending.fetch_sub(1, Ordering::AcqRel);
                }
                match command {
                    RoomCommand::Join { conn, access, principal, handle } => {
                        let (tx, link_rx) = mpsc::unbounded_channel();
                        links.insert(conn, tx);
                        empty_since = None;
                        let link = ForwarderLink {
                            cluster: cluster.clone(),
                            owner: owner.clone(),
                            room: name.clone(),
                            access,
                            principal,
                            handle,
                            delivery: delivery.clone(),
                        };
                        let ended = ended_tx.clone();
                        let span = tracing::info_span!("forward", %conn, owner = %owner);
                        tokio::spawn(async move {
                            let end = link.run(link_rx).await;
                            let _ = ended.send((conn, end));
                        }.instrument(span));
                    }
                    RoomCommand::Messages { conn, messages } => {
                        if let Some(link) = links.get(&conn) {
                            for command in link_commands(&messages) {
                                let _ = link.send(command);
                            }
                        }
                    }
                    RoomCommand::Leave { conn } => {
                        if let Some(link) = links.remove(&conn) {
                            let _ = link.send(LinkCmd::Leave);
                        }
                        if links.is_empty() {
                            empty_since = Some(Instant::now());
                        }
                    }
                    api => {
                        let cluster = cluster.clone();
                        let owner = owner.clone();
                        let room = name.clone();
                        tokio::spawn(async move { forward_api(&cluster, &owner, &room, api).await });
                    }
                }
            }
            Some((conn, end)) = ended_rx.recv() => {
                links.remove(&conn);
                if links.is_empty() {
                    empty_since = Some(Instant::now());
                }
                if end == LinkEnd::OwnerGone {
                    tracing::info!(%owner, "the owner is gone or gave the room up; looking at the lease again");
                    break;
                }
            }
            () = sleep_until_opt(unload_at), if unload_at.is_some() => {
                if entry.remove_if_idle() {
                    rx.close();
                    return;
                }
                empty_since = Some(Instant::now());
            }
        }
    }
    entry.remove();
    for (_, link) in links {
        let _ = link.send(LinkCmd::Leave);
    }
}

/// One forwarded client connection on the forwarding relay.
struct ForwarderLink {
    cluster: Arc<Cluster>,
    owner: String,
    room: Arc<str>,
    access: Access,
    principal: Principal,
    handle: ConnHandle,
    delivery: Arc<Delivery>,
}

impl ForwarderLink {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<LinkCmd>) -> LinkEnd {
        static NEXT_LINK: AtomicU64 = AtomicU64::new(1);
        let client = &self.cluster.client;
        let link_id = format!(
            "{}-{}",
            node_token(&self.cluster.node),
            NEXT_LINK.fetch_add(1, Ordering::Relaxed)
        );
        let inbox = to_forwarder_subject(&self.cluster.node, &link_id);
        let to_owner = to_owner_subject(&self.owner, &link_id);
        // Subscribed before the open, so the owner's first frames are not missed.
        let mut from_owner = match client.subscribe(inbox).await {
            Ok(sub) => sub,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe for a forwarded connection");
                self.handle.close(CloseReason::OwnerChanged);
                return LinkEnd::Normal;
            }
        };
        let mut open = HeaderMap::new();
        open.insert(H_ROOM, &*self.room);
        open.insert(H_LINK, link_id.as_str());
        open.insert(H_FROM, &*self.cluster.node);
        open.insert(H_ACCESS, self.access.as_str());
        open.insert(H_PRINCIPAL, self.principal.raw().to_string().as_str());
        if self.handle.takes_stateless() {
            open.insert(H_STATELESS, "1");
        }
        let opened = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.request_with_headers(open_subject(&self.owner), open, Bytes::new()),
        )
        .await;
        match opened {
            Ok(Ok(answer)) if header(&answer.headers, H_ERROR).is_none() => {}
            Ok(Ok(answer)) => {
                let error = header(&answer.headers, H_ERROR).unwrap_or_default();
                tracing::info!(error, "the owner refused the forwarded connection");
                self.handle.close(CloseReason::OwnerChanged);
                return LinkEnd::OwnerGone;
            }
            Ok(Err(error)) => {
                tracing::info!(%error, "the owner cannot be reached");
                self.handle.close(CloseReason::OwnerChanged);
                return LinkEnd::OwnerGone;
            }
            Err(_) => {
                tracing::info!("the owner did not answer in time");
                self.handle.close(CloseReason::OwnerChanged);
                return LinkEnd::OwnerGone;
            }
        }
        let mut sent = 0u64;
        let mut expected = 1u64;
        let mut heard = Instant::now();
        let link_times = LinkTimes::for_lease(self.cluster.lease);
        let mut ping = tokio::time::interval(link_times.ping);
        let send = |ctl: &'static str, seq: Option<u64>, payload: Bytes| {
            client.publish_with_headers(to_owner.clone(), link_headers(ctl, seq, None), payload)
        };
        let end = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(LinkCmd::Send { ctl, payload }) => {
                        sent += 1;
                        if send(ctl, Some(sent), payload).await.is_err() {
                            self.handle.close(CloseReason::OwnerChanged);
                            break LinkEnd::Normal;
                        }
                    }
                    Some(LinkCmd::Leave) | None => break LinkEnd::Normal,
                },
                message = from_owner.next() => {
                    let Some(message) = message else {
                        self.handle.close(CloseReason::OwnerChanged);
                        break LinkEnd::Normal;
                    };
                    heard = Instant::now();
                    match header(&message.headers, H_CTL) {
                        Some(CTL_FRAME) => {
                            let seq = header(&message.headers, H_SEQ).and_then(|s| s.parse::<u64>().ok());
                            if seq != Some(expected) {
                                tracing::warn!(?seq, expected, "gap in the owner's frames; closing the connection to resync");
                                self.cluster.metrics.error("cluster_link_gap");
                                self.handle.close(CloseReason::OwnerChanged);
                                break LinkEnd::Normal;
                            }
                            expected += 1;
                            if !self.delivery.deliver(&self.handle, message.payload) {
                                tracing::warn!("forwarded connection fell behind; disconnecting it");
                                self.handle.close(CloseReason::SlowReader);
                                break LinkEnd::Normal;
                            }
                        }
                        Some(CTL_CLOSE) => {
                            let reason = header(&message.headers, H_CLOSE)
                                .and_then(CloseReason::from_name)
                                .unwrap_or(CloseReason::OwnerChanged);
                            self.handle.close(reason);
                            // The owner's closing is final for this link; a lost room also
                            // means the owner is no longer the owner.
                            return if reason == CloseReason::OwnerChanged || reason == CloseReason::Shutdown {
                                LinkEnd::OwnerGone
                            } else {
                                LinkEnd::Normal
                            };
                        }
                        Some(CTL_PING) => {
                            let sent = header(&message.headers, H_SEQ).and_then(|s| s.parse::<u64>().ok());
                            if missed_messages(sent, expected) {
                                tracing::warn!(?sent, expected, "frames of the owner were lost; closing the connection to resync");
                                self.cluster.metrics.error("cluster_link_gap");
                                self.handle.close(CloseReason::OwnerChanged);
                                break LinkEnd::Normal;
                            }
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > link_times.silence {
                        tracing::warn!("the owner went silent; closing the connection to resync");
                        self.cluster.metrics.error("cluster_link_timeout");
                        self.handle.close(CloseReason::OwnerChanged);
                        break LinkEnd::OwnerGone;
                    }
                    let _ = send(CTL_PING, Some(sent), Bytes::new()).await;
                }
            }
        };
        let _ = send(CTL_LEAVE, None, Bytes::new()).await;
        end
    }
}

/// Sends a document API request to the owner and answers it; a request that cannot be
/// forwarded is dropped (the route answers 503).
async fn forward_api(cluster: &Cluster, owner: &str, room: &str, command: RoomCommand) {
    let mut headers = HeaderMap::new();
    headers.insert(H_ROOM, room);
    let (kind, payload) = match &command {
        RoomCommand::Export { .. } => ("export", Bytes::new()),
        RoomCommand::ExportJson { .. } => ("json", Bytes::new()),
        RoomCommand::ApplyUpdate { update, .. } => ("update", update.clone()),
        RoomCommand::Delete { .. } => ("delete", Bytes::new()),
        _ => return,
    };
    headers.insert(H_API, kind);
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        cluster
            .client
            .request_with_headers(api_subject(owner), headers, payload),
    )
    .await;
    let Ok(Ok(answer)) = answer else {
        tracing::warn!("a forwarded API request got no answer");
        return;
    };
    let error = header(&answer.headers, H_ERROR).map(str::to_owned);
    if error.as_deref() == Some("unavailable") {
        return;
    }
    match command {
        RoomCommand::Export { reply } => {
            let _ = reply.send(Arc::from(answer.payload.as_ref()));
        }
        RoomCommand::ExportJson { reply } => {
            if let Ok(json) = serde_json::from_slice(&answer.payload) {
                let _ = reply.send(json);
            }
        }
        RoomCommand::ApplyUpdate { reply, .. } => {
            let result = match error.as_deref() {
                None => Ok(()),
                Some("too_large") => Err(ApiUpdateError::TooLarge),
                Some("deleted") => Err(ApiUpdateError::Deleted),
                Some(other) => Err(ApiUpdateError::Invalid(
                    other.strip_prefix("invalid:").unwrap_or(other).to_owned(),
                )),
            };
            let _ = reply.send(result);
        }
        RoomCommand::Delete { reply } => {
            let _ = reply.send(());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::inbound::decode_frame;
    use crdt::protocol::{encode_awareness, encode_update};

    #[test]
    fn messages_encode_back_to_the_frame_they_came_from() {
        let frame = Bytes::from(
            [
                encode_sync_step1(&[0]),
                encode_update(&[1, 2, 3]),
                encode_awareness(&[0]),
                encode_query_awareness(),
                encode_save_request(7),
                encode_sync_step2(&[0, 0]),
            ]
            .concat(),
        );
        let decoded = decode_frame(&frame);
        assert_eq!(decoded.error, None);
        assert_eq!(
            link_commands(&decoded.messages),
            vec![LinkCmd::frame(frame)]
        );
    }

    #[test]
    fn a_stateless_message_goes_on_its_own_between_the_frames_around_it() {
        let stateless = Bytes::from_static(&[5, 2, b'h', b'i']);
        let messages = [
            Inbound::SyncStep1(vec![0].into()),
            Inbound::Stateless(stateless.clone()),
            Inbound::QueryAwareness,
        ];
        assert_eq!(
            link_commands(&messages),
            vec![
                LinkCmd::frame(encode_sync_step1(&[0]).into()),
                LinkCmd::stateless(stateless.clone()),
                LinkCmd::frame(encode_query_awareness().into()),
            ]
        );
        assert_eq!(
            link_commands(&[Inbound::Stateless(stateless.clone())]),
            vec![LinkCmd::stateless(stateless)]
        );
    }
}
