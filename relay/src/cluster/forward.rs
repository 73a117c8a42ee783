//! Forwarding: a relay that does not own a room carries its connections to the owner, over core
//! NATS subjects under `yrelay.node.<node>.`.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::names::node_prefix;
use crate::registry::RoomRegistry;

/// Starts this node's service: it answers pings on `yrelay.node.<node>.ping` (so a second relay
/// with the same name is refused at start-up).
pub(crate) fn start(
    cluster: Arc<Cluster>,
    registry: Arc<RoomRegistry>,
    shutdown: CancellationToken,
) {
    let _ = registry;
    let prefix = node_prefix(&cluster.node);
    tokio::spawn(async move {
        let mut pings = match cluster.client.subscribe(format!("{prefix}.ping")).await {
            Ok(sub) => sub,
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to this node's subjects");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                ping = pings.next() => {
                    let Some(ping) = ping else { break };
                    if let Some(reply) = ping.reply {
                        let _ = cluster.client.publish(reply, cluster.node.as_bytes().to_vec().into()).await;
                    }
                }
            }
        }
    });
}
