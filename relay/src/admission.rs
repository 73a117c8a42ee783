//! Admission of a room connection, the same for every transport (a WebSocket upgrade, a new
//! long-polling session): the origin, the token, the document and connection limits, and the
//! per-client limit. Each refusal is a [`Refusal`], mapped here, once, to its HTTP status, its
//! metric and its log line.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::header::ORIGIN;
use http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::auth::{Access, AuthError, Grant, Keys, authorize};
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::registry::RoomRegistry;
use crate::telemetry::Metrics;

/// What a transport knows about a request to join a room.
pub(crate) struct JoinRequest<'a> {
    /// The room (already decoded and checked).
    pub room: &'a str,
    /// The request headers (`Origin`, `Authorization`).
    pub headers: &'a HeaderMap,
    /// The token, from the query or the `Authorization` header.
    pub token: Option<&'a str>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The address the connection came in on.
    pub local: Option<SocketAddr>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// A web page of an origin that is not allowed (`--allowed-origin`, `--public-url`).
    #[error("origin not allowed")]
    Origin,
    /// The token is missing, invalid, or does not allow reading the room.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Loading the room would go over `--max-rooms`.
    #[error("too many documents are open")]
    TooManyRooms,
    /// The room has `--max-room-connections`.
    #[error("too many connections to this document")]
    RoomFull,
    /// The token has `--max-connections-per-token` open.
    #[error("too many connections with this token")]
    TooManyForToken,
    /// The client address has `--max-connections-per-address` open (relays without a secret).
    #[error("too many connections from this address")]
    TooManyForAddress,
    /// The relay has `--max-connections`.
    #[error("too many connections")]
    TooManyConnections,
}

impl Refusal {
    /// The HTTP status: 401/403 for the token and the origin, 429 for a client over its own
    /// limit, 503 when the relay or the room is full.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::Auth(error) => error.status(),
            Refusal::TooManyForToken | Refusal::TooManyForAddress => StatusCode::TOO_MANY_REQUESTS,
            Refusal::TooManyRooms | Refusal::RoomFull | Refusal::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `relay_errors_total` reason.
    pub(crate) fn metric(&self) -> &'static str {
        match self {
            Refusal::Origin => "origin_refused",
            Refusal::Auth(_) => "auth_refused",
            Refusal::TooManyRooms => "too_many_rooms",
            Refusal::RoomFull => "room_full",
            Refusal::TooManyForToken => "too_many_connections_for_token",
            Refusal::TooManyForAddress => "too_many_connections_for_address",
            Refusal::TooManyConnections => "too_many_connections",
        }
    }

    /// The answer: the status and a JSON body `{"error": reason}`.
    pub(crate) fn response(&self) -> Response {
        crate::edge::error(self.status(), &self.to_string())
    }
}

/// The rules and counts that decide who may open a room connection: the one owner of the
/// connection slots.
pub(crate) struct Admission {
    origins: OriginPolicy,
    keys: Option<Arc<Keys>>,
    clients: Arc<ClientCounts>,
    /// Connections open, against `--max-connections`.
    open: Arc<AtomicUsize>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// Admission with these rules.
    pub(crate) fn new(
        origins: OriginPolicy,
        keys: Option<Arc<Keys>>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admission {
            origins,
            keys,
            clients: Arc::new(ClientCounts::default()),
            open: Arc::new(AtomicUsize::new(0)),
            config,
            metrics,
        }
    }

    /// Which web pages may use the relay.
    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.origins
    }

    /// The token keys; `None` runs the relay open.
    pub(crate) fn keys(&self) -> Option<&Keys> {
        self.keys.as_deref()
    }

    /// Checks everything a room connection needs before it is opened, and takes its slots.
    /// Counts and logs a refusal.
    ///
    /// # Errors
    /// The first [`Refusal`] that applies.
    pub(crate) fn admit(
        &self,
        registry: &RoomRegistry,
        request: &JoinRequest<'_>,
    ) -> Result<Admitted, Refusal> {
        let result = self.check(registry, request);
        if let Err(refusal) = &result {
            self.note_refusal(Some(request.room), refusal);
        }
        result
    }

    /// Counts a refusal and logs it: a bad token at `info` (clients retry with stale tokens
    /// routinely), anything else at `warn`.
    fn note_refusal(&self, room: Option<&str>, refusal: &Refusal) {
        self.metrics.error(refusal.metric());
        // A socket refused before any document is chosen has no room.
        let room = room.unwrap_or("-");
        match refusal {
            Refusal::Auth(error) => tracing::info!(room, %error, "refused a connection"),
            other => tracing::warn!(room, reason = %other, "refused a connection"),
        }
    }

    fn check(
        &self,
        registry: &RoomRegistry,
        request: &JoinRequest<'_>,
    ) -> Result<Admitted, Refusal> {
        let origin = self
            .origins
            .check(request.headers.get(ORIGIN), request.local);
        if !origin.is_allowed() {
            return Err(Refusal::Origin);
        }
        let grant = authorize(self.keys(), request.token, Some(request.room), Access::Read)?;
        // Quick checks for a clear HTTP answer; the registry enforces both again, under its
        // lock, when the connection joins.
        if !registry.admits(request.room) {
            return Err(Refusal::TooManyRooms);
        }
        if registry.connections(request.room) >= self.config.max_room_connections {
            return Err(Refusal::RoomFull);
        }
        let slot = self.take_slots(request.token, request.peer)?;
        Ok(Admitted { grant, slot })
    }

    /// Takes a connection slot of the client and one of the relay. The client's own limit
    /// first: a client over it must not take a relay-wide slot meanwhile.
    fn take_slots(
        &self,
        token: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<ConnectionSlot, Refusal> {
        let client = match client_limit(
            &self.clients,
            &self.config,
            self.keys.is_some(),
            token,
            peer,
        ) {
            Some((key, limit, refusal)) => Some(self.clients.reserve(key, limit).ok_or(refusal)?),
            None => None,
        };
        let global = reserve_slot(&self.open, self.config.max_connections)
            .ok_or(Refusal::TooManyConnections)?;
        Ok(ConnectionSlot {
            _global: global,
            _client: client,
        })
    }
}

impl Admission {
    /// Checks a transport that carries room connections of its own (a Hocuspocus socket, whose
    /// documents are each admitted with [`Admission::admit`]): the origin, and a connection slot
    /// of the relay and of its client, so that sockets without documents are bounded too.
    /// Counts and logs a refusal.
    ///
    /// # Errors
    /// [`Refusal::Origin`], or a limit's refusal.
    pub(crate) fn admit_carrier(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Result<ConnectionSlot, Refusal> {
        let result = self.check_carrier(headers, token, peer, local);
        if let Err(refusal) = &result {
            self.note_refusal(None, refusal);
        }
        result
    }

    fn check_carrier(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Result<ConnectionSlot, Refusal> {
        if !self.origins.check(headers.get(ORIGIN), local).is_allowed() {
            return Err(Refusal::Origin);
        }
        self.take_slots(token, peer)
    }
}

/// An admitted connection: what it may do, and its slots, given back when it is dropped.
pub(crate) struct Admitted {
    /// The access granted, and until when.
    pub grant: Grant,
    /// The connection's slots; hold it as long as the connection lives.
    pub slot: ConnectionSlot,
}

/// Whom a connection counts against, with that client's limit and the refusal past it: its token
/// on a relay with a secret; its address on an open relay, except a loopback address (local
/// tools, tests and a reverse proxy on the same machine all share it).
fn client_limit(
    counts: &ClientCounts,
    config: &Config,
    secured: bool,
    token: Option<&str>,
    peer: Option<SocketAddr>,
) -> Option<(ClientKey, usize, Refusal)> {
    if secured {
        let token = token?;
        return Some((
            counts.token_key(token),
            config.max_connections_per_token,
            Refusal::TooManyForToken,
        ));
    }
    let ip = peer?.ip().to_canonical();
    (!ip.is_loopback()).then_some((
        ClientKey::Address(ip),
        config.max_connections_per_address,
        Refusal::TooManyForAddress,
    ))
}

/// The slots of one connection: one of `--max-connections`, and one of its client's.
pub(crate) struct ConnectionSlot {
    _global: GlobalSlot,
    _client: Option<ClientSlot>,
}

/// A slot of `--max-connections`, given back when dropped.
struct GlobalSlot(Arc<AtomicUsize>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a slot of `--max-connections`, or `None` at the limit.
fn reserve_slot(open: &Arc<AtomicUsize>, limit: usize) -> Option<GlobalSlot> {
    let mut current = open.load(Ordering::Relaxed);
    loop {
        if current >= limit {
            return None;
        }
        match open.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => return Some(GlobalSlot(open.clone())),
            Err(actual) => current = actual,
        }
    }
}

/// Whom a per-client limit counts: a token, or (on a relay without tokens) an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// A token, by a keyed hash of it (the relay keeps no tokens).
    Token(u64),
    /// A client IP address.
    Address(IpAddr),
}

/// Connections open per client.
#[derive(Debug, Default)]
pub(crate) struct ClientCounts {
    // A std mutex: held for one map update.
    open: Mutex<HashMap<ClientKey, usize>>,
    // Random per process, so nobody can make two tokens share a count on purpose.
    hasher: RandomState,
}

impl ClientCounts {
    /// The key of a token.
    pub(crate) fn token_key(&self, token: &str) -> ClientKey {
        ClientKey::Token(self.hasher.hash_one(token))
    }

    /// Takes one of `limit` slots of `key`, or `None` when it has them all.
    pub(crate) fn reserve(self: &Arc<Self>, key: ClientKey, limit: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().expect("client counts lock");
        let count = open.entry(key).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Connections open for `key`.
    #[cfg(test)]
    pub(crate) fn open(&self, key: ClientKey) -> usize {
        let open = self.open.lock().expect("client counts lock");
        open.get(&key).copied().unwrap_or(0)
    }
}

/// A client's slot, given back when dropped.
pub(crate) struct ClientSlot {
    counts: Arc<ClientCounts>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("client counts lock");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_count_on_a_secured_relay_and_addresses_other_than_loopback_on_an_open_one() {
        let counts = ClientCounts::default();
        let config = Config {
            max_connections_per_token: 7,
            max_connections_per_address: 9,
            ..Config::default()
        };
        let remote: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let limit = |secured, token, peer: &str| {
            let peer: SocketAddr = peer.parse().expect("addr");
            client_limit(&counts, &config, secured, token, Some(peer))
        };
        assert_eq!(
            limit(true, Some("t"), "192.0.2.1:5000"),
            Some((counts.token_key("t"), 7, Refusal::TooManyForToken))
        );
        assert_eq!(
            limit(true, Some("t"), "127.0.0.1:5000").map(|l| l.0),
            Some(counts.token_key("t")),
            "a token counts wherever it comes from"
        );
        assert_eq!(
            limit(false, None, "192.0.2.1:5000"),
            Some((
                ClientKey::Address(remote.ip()),
                9,
                Refusal::TooManyForAddress
            ))
        );
        assert_eq!(
            limit(false, Some("ignored"), "[::ffff:192.0.2.1]:5000").map(|l| l.0),
            Some(ClientKey::Address(remote.ip())),
            "IPv4 through a dual-stack socket is the same address"
        );
        assert_eq!(limit(false, None, "127.0.0.1:5000"), None);
        assert_eq!(limit(false, None, "[::1]:5000"), None);
        assert_eq!(limit(false, None, "[::ffff:127.0.0.1]:5000"), None);
    }

    #[test]
    fn a_client_holds_at_most_its_limit_and_gets_slots_back() {
        let counts = Arc::new(ClientCounts::default());
        let a = counts.token_key("token-a");
        let b = counts.token_key("token-b");
        assert_ne!(a, b);
        assert_eq!(a, counts.token_key("token-a"));
        let first = counts.reserve(a, 2).expect("one");
        let second = counts.reserve(a, 2).expect("two");
        assert!(counts.reserve(a, 2).is_none(), "a third is over the limit");
        let other = counts.reserve(b, 2).expect("another token has its own");
        drop(first);
        assert_eq!(counts.open(a), 1);
        let again = counts.reserve(a, 2).expect("a slot was given back");
        drop((second, again, other));
        assert_eq!(counts.open(a), 0);
        assert!(counts.open.lock().expect("lock").is_empty(), "no leftovers");
    }
}
