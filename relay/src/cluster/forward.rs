//! Forwarding: a relay that does not own a room carries its connections and document API
//! requests to the owner, over core NATS subjects under `yrelay.node.<node>.` (node names made
//! into subject tokens). The owner joins each forwarded connection to the room as a normal
//! connection; its outbound queue is published back to the forwarding relay.
//!
//! Subjects of node `N` (`P` = `yrelay.node.<N>`):
//! - `P.ping`: answered with the node name (start-up refuses a second relay with the same name).
//! - `P.open`: a forwarding relay opens a link (headers: room, link id, its node, access,
//!   principal); answered once the connection joined the room, or with `Relay-Error`.
//! - `P.in.<link>`: frames of the client, in order (`Relay-Seq` 1, 2, ...), its leaving, pings.
//! - `P.link.<link>`: frames of the room for the client, in order, the close, pings (on the
//!   forwarding relay's prefix).
//! - `P.api`: a document API request for a room `N` owns.
//!
//! A gap in either direction's sequence, or a link silent past [`LINK_TIMEOUT`], closes the
//! client's connection with 1013 so that it resyncs on reconnect: a frame is never dropped
//! silently. When the owner closes a link because it lost the room (1013), or cannot be reached,
//! the forwarding relay forgets who owns the room; the next connection looks at the lease again
//! (and takes the room if the lease is gone).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use crdt::protocol::{
    encode_query_awareness, encode_save_request, encode_sync_step1, encode_sync_step2,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Cluster;
use super::names::{node_prefix, node_token};
use crate::auth::{Access, Grant, Principal};
use crate::close::CloseReason;
use crate::outbound::{ConnHandle, Delivery, Outbound};
use crate::registry::RoomRegistry;
use crate::room::core::ApiUpdateError;
use crate::room::inbound::{Inbound, decode_frame};
use crate::room::{ConnId, RoomCommand};

/// How often each side of a link says it is alive.
const PING_INTERVAL: Duration = Duration::from_secs(3);
/// A link silent this long is dead: its client is closed (1013), or, on the owner, it leaves.
pub(crate) const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a link or an API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const H_ROOM: &str = "Relay-Room";
const H_LINK: &str = "Relay-Link";
const H_FROM: &str = "Relay-From";
const H_ACCESS: &str = "Relay-Access";
const H_PRINCIPAL: &str = "Relay-Principal";
const H_SEQ: &str = "Relay-Seq";
const H_CTL: &str = "Relay-Ctl";
const H_CLOSE: &str = "Relay-Close";
const H_API: &str = "Relay-Api";
const H_ERROR: &str = "Relay-Error";

/// What a link message is.
const CTL_FRAME: &str = "frame";
const CTL_LEAVE: &str = "leave";
const CTL_CLOSE: &str = "close";
const CTL_PING: &str = "ping";

/// Connection ids of forwarded connections on the owner: a range sessions never reach.
const FORWARDED_CONN_BASE: u64 = 1 << 62;

fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// The messages of one client frame, encoded again as one frame (several messages per frame is
/// what the protocol allows). Updates and awareness keep their original bytes.
fn encode_messages(messages: &[Inbound]) -> Bytes {
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
            // The link carries y-websocket frames, which have no stateless message: a Hocuspocus
            // client's stateless broadcast does not cross the cluster hop (a known limitation,
            // stated in the README), so it is left out rather than misencoded.
            Inbound::Stateless(_) => {
                tracing::debug!("stateless message not forwarded to the owning relay");
            }
        }
    }
    frame.freeze()
}

// ---------------------------------------------------------------------------------------------
// The forwarding relay's side.

/// What the remote room task tells one link.
enum LinkCmd {
    Frame(Bytes),
    Leave,
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
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_remote(
    cluster: Arc<Cluster>,
    registry: &Arc<RoomRegistry>,
    name: &Arc<str>,
    entry_id: u64,
    owner: String,
    rx: &mut mpsc::Receiver<RoomCommand>,
    pending: &AtomicUsize,
    idle: Duration,
) {
    tracing::info!(%owner, "another relay owns the room; forwarding to it");
    let settings = registry.room_settings();
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
                            let _ = link.send(LinkCmd::Frame(encode_messages(&messages)));
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
                if registry.remove_if_idle(name, entry_id, pending) {
                    rx.close();
                    return;
                }
                empty_since = Some(Instant::now());
            }
        }
    }
    registry.remove(name, entry_id);
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
        let owner_prefix = node_prefix(&self.owner);
        let inbox = format!("{}.link.{link_id}", node_prefix(&self.cluster.node));
        let to_owner = format!("{owner_prefix}.in.{link_id}");
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
        let opened = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.request_with_headers(format!("{owner_prefix}.open"), open, Bytes::new()),
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
        let mut ping = tokio::time::interval(PING_INTERVAL);
        let send = |ctl: &'static str, seq: Option<u64>, payload: Bytes| {
            let mut headers = HeaderMap::new();
            headers.insert(H_CTL, ctl);
            if let Some(seq) = seq {
                headers.insert(H_SEQ, seq.to_string().as_str());
            }
            client.publish_with_headers(to_owner.clone(), headers, payload)
        };
        let end = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(LinkCmd::Frame(frame)) => {
                        sent += 1;
                        if send(CTL_FRAME, Some(sent), frame).await.is_err() {
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
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > LINK_TIMEOUT {
                        tracing::warn!("the owner went silent; closing the connection to resync");
                        self.cluster.metrics.error("cluster_link_timeout");
                        self.handle.close(CloseReason::OwnerChanged);
                        break LinkEnd::OwnerGone;
                    }
                    let _ = send(CTL_PING, None, Bytes::new()).await;
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
        cluster.client.request_with_headers(
            format!("{}.api", node_prefix(owner)),
            headers,
            payload,
        ),
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

// ---------------------------------------------------------------------------------------------
// The owner's side.

/// Starts this node's service: pings, forwarded connections and forwarded API requests.
pub(crate) fn start(
    cluster: Arc<Cluster>,
    registry: Arc<RoomRegistry>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("node", node = %cluster.node);
    tokio::spawn(serve_node(cluster, registry, shutdown).instrument(span));
}

async fn serve_node(
    cluster: Arc<Cluster>,
    registry: Arc<RoomRegistry>,
    shutdown: CancellationToken,
) {
    let prefix = node_prefix(&cluster.node);
    let client = cluster.client.clone();
    let subscribe = |suffix: &str| client.subscribe(format!("{prefix}.{suffix}"));
    let (mut pings, mut opens, mut frames, mut apis) = match tokio::try_join!(
        subscribe("ping"),
        subscribe("open"),
        subscribe("in.*"),
        subscribe("api"),
    ) {
        Ok(subs) => subs,
        Err(error) => {
            tracing::error!(%error, "cannot subscribe to this node's subjects: forwarding to it fails");
            return;
        }
    };
    let in_prefix = format!("{prefix}.in.");
    let mut links: HashMap<String, mpsc::UnboundedSender<async_nats::Message>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(ping) = pings.next() => {
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, Bytes::copy_from_slice(cluster.node.as_bytes())).await;
                }
            }
            Some(open) = opens.next() => {
                let Some(link) = header(&open.headers, H_LINK).map(str::to_owned) else { continue };
                if shutdown.is_cancelled() {
                    // Handing rooms over: never load one again here; the forwarding relay
                    // looks at the lease again (released as the rooms unload).
                    if let Some(reply) = open.reply {
                        let mut answer = HeaderMap::new();
                        answer.insert(H_ERROR, "shutting down");
                        let _ = client.publish_with_headers(reply, answer, Bytes::new()).await;
                    }
                    continue;
                }
                let (tx, inbox) = mpsc::unbounded_channel();
                links.insert(link.clone(), tx);
                let task = OwnerLink {
                    cluster: cluster.clone(),
                    registry: registry.clone(),
                    shutdown: shutdown.clone(),
                    link: link.clone(),
                };
                let done = done_tx.clone();
                cluster.tasks.spawn(async move {
                    task.run(open, inbox).await;
                    let _ = done.send(link);
                });
            }
            Some(frame) = frames.next() => {
                let link = frame.subject.strip_prefix(in_prefix.as_str()).unwrap_or_default();
                if let Some(tx) = links.get(link) {
                    let _ = tx.send(frame);
                }
            }
            Some(api) = apis.next(), if !shutdown.is_cancelled() => {
                let (cluster, registry) = (cluster.clone(), registry.clone());
                tokio::spawn(async move { answer_api(&cluster, &registry, api).await });
            }
            Some(link) = done_rx.recv() => {
                links.remove(&link);
            }
            () = cluster.stopped.cancelled() => break,
        }
    }
}

/// One forwarded connection on the owner: joined to the room like any connection.
struct OwnerLink {
    cluster: Arc<Cluster>,
    registry: Arc<RoomRegistry>,
    shutdown: CancellationToken,
    link: String,
}

impl OwnerLink {
    async fn run(
        self,
        open: async_nats::Message,
        mut inbox: mpsc::UnboundedReceiver<async_nats::Message>,
    ) {
        static NEXT_CONN: AtomicU64 = AtomicU64::new(FORWARDED_CONN_BASE);
        let client = self.cluster.client.clone();
        let headers = &open.headers;
        let (Some(room), Some(from), Some(reply)) = (
            header(headers, H_ROOM).map(str::to_owned),
            header(headers, H_FROM).map(str::to_owned),
            open.reply.clone(),
        ) else {
            return;
        };
        let access = header(headers, H_ACCESS)
            .and_then(|a| a.parse::<Access>().ok())
            .unwrap_or(Access::Read);
        let principal = header(headers, H_PRINCIPAL)
            .and_then(|p| p.parse::<u64>().ok())
            .map_or(Principal::ANYONE, |raw| Principal::forwarded(&from, raw));
        let grant = Grant {
            access,
            expires_at: None,
            principal,
        };
        let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!("forwarded", %conn, room = %room, from = %from);
        let to_forwarder = format!("{}.link.{}", node_prefix(&from), self.link);
        let (handle, mut outbound) = crate::outbound::channel();
        let joined = match self
            .registry
            .join(&room, conn, &grant, handle.clone())
            .await
        {
            Ok(joined) => joined,
            Err(error) => {
                let mut answer = HeaderMap::new();
                answer.insert(H_ERROR, error.to_string().as_str());
                let _ = client
                    .publish_with_headers(reply, answer, Bytes::new())
                    .await;
                return;
            }
        };
        let _ = client.publish(reply, Bytes::new()).await;
        async {
            tracing::debug!("forwarded connection joined");
            let send = |ctl: &'static str, seq: Option<u64>, close: Option<CloseReason>, payload: Bytes| {
                let mut headers = HeaderMap::new();
                headers.insert(H_CTL, ctl);
                if let Some(seq) = seq {
                    headers.insert(H_SEQ, seq.to_string().as_str());
                }
                if let Some(reason) = close {
                    headers.insert(H_CLOSE, reason.as_str());
                }
                client.publish_with_headers(to_forwarder.clone(), headers, payload)
            };
            let mut sent = 0u64;
            let mut expected = 1u64;
            let mut heard = Instant::now();
            let mut ping = tokio::time::interval(PING_INTERVAL);
            loop {
                tokio::select! {
                    message = inbox.recv() => {
                        let Some(message) = message else { break };
                        heard = Instant::now();
                        match header(&message.headers, H_CTL) {
                            Some(CTL_FRAME) => {
                                let seq = header(&message.headers, H_SEQ).and_then(|s| s.parse::<u64>().ok());
                                if seq != Some(expected) {
                                    tracing::warn!(?seq, expected, "gap in a forwarded connection's frames; closing it to resync");
                                    self.cluster.metrics.error("cluster_link_gap");
                                    let _ = send(CTL_CLOSE, None, Some(CloseReason::OwnerChanged), Bytes::new()).await;
                                    break;
                                }
                                expected += 1;
                                let decoded = decode_frame(&message.payload);
                                if !decoded.messages.is_empty() {
                                    let command = RoomCommand::Messages { conn, messages: decoded.messages };
                                    if joined.room.send(command).await.is_err() {
                                        let _ = send(CTL_CLOSE, None, Some(CloseReason::OwnerChanged), Bytes::new()).await;
                                        break;
                                    }
                                }
                                if decoded.error.is_some() {
                                    let _ = send(CTL_CLOSE, None, Some(CloseReason::ProtocolError), Bytes::new()).await;
                                    break;
                                }
                            }
                            Some(CTL_LEAVE) => break,
                            _ => {}
                        }
                    }
                    out = outbound.recv() => match out {
                        Some(Outbound::Frame(frame)) => {
                            sent += 1;
                            let len = frame.len();
                            let _ = send(CTL_FRAME, Some(sent), None, frame).await;
                            handle.backlog.written(len);
                        }
                        Some(Outbound::Close(reason)) => {
                            let _ = send(CTL_CLOSE, None, Some(reason), Bytes::new()).await;
                            break;
                        }
                        None => break,
                    },
                    () = handle.kick.cancelled() => {
                        let _ = send(CTL_CLOSE, None, Some(CloseReason::SlowReader), Bytes::new()).await;
                        break;
                    }
                    () = self.shutdown.cancelled() => {
                        // The room is handed over: the client reconnects to the next owner.
                        let _ = send(CTL_CLOSE, None, Some(CloseReason::OwnerChanged), Bytes::new()).await;
                        break;
                    }
                    _ = ping.tick() => {
                        if heard.elapsed() > LINK_TIMEOUT {
                            tracing::info!("the forwarding relay went silent; the connection leaves");
                            self.cluster.metrics.error("cluster_link_timeout");
                            break;
                        }
                        let _ = send(CTL_PING, None, None, Bytes::new()).await;
                    }
                }
            }
            let _ = joined.room.send(RoomCommand::Leave { conn }).await;
            drop(joined.membership);
            tracing::debug!("forwarded connection left");
        }
        .instrument(span)
        .await;
    }
}

/// Answers a forwarded document API request.
async fn answer_api(cluster: &Cluster, registry: &Arc<RoomRegistry>, request: async_nats::Message) {
    let Some(reply) = request.reply.clone() else {
        return;
    };
    let (Some(room), Some(kind)) = (
        header(&request.headers, H_ROOM).map(str::to_owned),
        header(&request.headers, H_API).map(str::to_owned),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let payload = match kind.as_str() {
        "export" => ask(registry, &room, |reply| RoomCommand::Export { reply })
            .await
            .map(|state| Bytes::copy_from_slice(&state)),
        "json" => ask(registry, &room, |reply| RoomCommand::ExportJson { reply })
            .await
            .map(|json| Bytes::from(json.to_string())),
        "update" => {
            let update = request.payload.clone();
            match ask(registry, &room, |reply| RoomCommand::ApplyUpdate {
                update,
                reply,
            })
            .await
            {
                Some(Ok(())) => Some(Bytes::new()),
                Some(Err(error)) => {
                    let code = match error {
                        ApiUpdateError::TooLarge => "too_large".to_owned(),
                        ApiUpdateError::Deleted => "deleted".to_owned(),
                        ApiUpdateError::Invalid(reason) => format!("invalid:{reason}"),
                    };
                    headers.insert(H_ERROR, code.as_str());
                    Some(Bytes::new())
                }
                None => None,
            }
        }
        "delete" => ask(registry, &room, |reply| RoomCommand::Delete { reply })
            .await
            .map(|()| Bytes::new()),
        _ => None,
    };
    let payload = payload.unwrap_or_else(|| {
        headers.insert(H_ERROR, "unavailable");
        Bytes::new()
    });
    let _ = cluster
        .client
        .publish_with_headers(reply, headers, payload)
        .await;
}

async fn ask<T>(
    registry: &Arc<RoomRegistry>,
    room: &str,
    make: impl FnOnce(oneshot::Sender<T>) -> RoomCommand,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    registry.request(room, make(tx)).await.ok()?;
    tokio::time::timeout(REQUEST_TIMEOUT, rx).await.ok()?.ok()
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(encode_messages(&decoded.messages), frame);
    }
}
