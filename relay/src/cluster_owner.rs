//! This relay as the owner of rooms other relays forward to: it answers pings, joins each
//! forwarded connection to its room like any connection and publishes the room's frames back,
//! and answers forwarded document API requests (the contract is in [`crate::cluster::link`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Access, Grant, Principal};
use crate::close::CloseReason;
use crate::cluster::Cluster;
use crate::cluster::link::{
    CTL_CLOSE, CTL_FRAME, CTL_LEAVE, CTL_PING, CTL_STATELESS, H_ACCESS, H_API, H_CTL, H_ERROR,
    H_FROM, H_LINK, H_PRINCIPAL, H_ROOM, H_SEQ, H_STATELESS, LinkTimes, REQUEST_TIMEOUT, header,
    link_headers, missed_messages, to_forwarder_subject,
};
use crate::cluster::names::node_prefix;
use crate::outbound::Outbound;
use crate::registry::RoomRegistry;
use crate::room::core::ApiUpdateError;
use crate::room::inbound::{Decoded, Inbound, decode_frame};
use crate::room::{ConnId, RoomCommand};

/// Connection ids of forwarded connections on the owner: a range sessions never reach.
const FORWARDED_CONN_BASE: u64 = 1 << 62;

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
        let to_forwarder = to_forwarder_subject(&from, &self.link);
        let (handle, mut outbound) = crate::outbound::channel();
        // A Hocuspocus client on the forwarding relay takes the room's stateless messages.
        let handle = if header(headers, H_STATELESS).is_some() {
            handle.taking_stateless()
        } else {
            handle
        };
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
                let headers = link_headers(ctl, seq, close.map(CloseReason::as_str));
                client.publish_with_headers(to_forwarder.clone(), headers, payload)
            };
            let mut sent = 0u64;
            let mut expected = 1u64;
            let mut heard = Instant::now();
            let link_times = LinkTimes::for_lease(self.cluster.lease);
            let mut ping = tokio::time::interval(link_times.ping);
            loop {
                tokio::select! {
                    message = inbox.recv() => {
                        let Some(message) = message else { break };
                        heard = Instant::now();
                        match header(&message.headers, H_CTL) {
                            Some(ctl @ (CTL_FRAME | CTL_STATELESS)) => {
                                let seq = header(&message.headers, H_SEQ).and_then(|s| s.parse::<u64>().ok());
                                if seq != Some(expected) {
                                    tracing::warn!(?seq, expected, "gap in a forwarded connection's frames; closing it to resync");
                                    self.cluster.metrics.error("cluster_link_gap");
                                    let _ = send(CTL_CLOSE, None, Some(CloseReason::OwnerChanged), Bytes::new()).await;
                                    break;
                                }
                                expected += 1;
                                let decoded = if ctl == CTL_STATELESS {
                                    // Checked for size and rate by the forwarding relay.
                                    Decoded { messages: vec![Inbound::Stateless(message.payload)], error: None }
                                } else {
                                    decode_frame(&message.payload)
                                };
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
                            Some(CTL_PING) => {
                                let sent = header(&message.headers, H_SEQ).and_then(|s| s.parse::<u64>().ok());
                                if missed_messages(sent, expected) {
                                    tracing::warn!(?sent, expected, "a forwarded connection's frames were lost; closing it to resync");
                                    self.cluster.metrics.error("cluster_link_gap");
                                    let _ = send(CTL_CLOSE, None, Some(CloseReason::OwnerChanged), Bytes::new()).await;
                                    break;
                                }
                            }
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
                        if heard.elapsed() > link_times.silence {
                            tracing::info!("the forwarding relay went silent; the connection leaves");
                            self.cluster.metrics.error("cluster_link_timeout");
                            break;
                        }
                        let _ = send(CTL_PING, Some(sent), None, Bytes::new()).await;
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
