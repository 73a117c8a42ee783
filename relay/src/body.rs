//! Request bodies, read only once a request is authorized, and within a deadline.
//!
//! warp's body filters read the whole body before the handler runs, so a request that is refused
//! anyway (no token, an unknown long-polling session) first took up to `--max-message-bytes` of
//! memory, for as long as its client cared to take. Routes with a body take it as a
//! [`PendingBody`] instead: the handler checks the token or the session from the headers, and only
//! then reads the body, which must arrive within `--body-timeout-secs`. A request refused before
//! its body is read is answered at once; hyper then closes the connection rather than read the
//! rest.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::reply::Response;

use crate::edge::error;
use crate::telemetry::Metrics;

type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// A request body not read yet.
pub(crate) struct PendingBody {
    stream: BodyStream,
    declared: u64,
    content_type: Option<String>,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// It did not arrive within the deadline.
    #[error("the body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The connection failed or ended inside it.
    #[error("the body could not be read: {0}")]
    Failed(String),
    /// A JSON route got another content type.
    #[error("send JSON with Content-Type: application/json")]
    NotJson,
    /// A JSON route got something that is not the expected JSON.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
}

impl BodyError {
    /// The answer to the client, counted in `relay_errors_total` where it is the client's doing.
    pub(crate) fn response(&self, metrics: &Metrics) -> Response {
        let status = match self {
            BodyError::TimedOut(_) => {
                metrics.error("body_timeout");
                tracing::info!(error = %self, "a request body was too slow; refused");
                StatusCode::REQUEST_TIMEOUT
            }
            BodyError::Failed(_) | BodyError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            BodyError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        error(status, &self.to_string())
    }
}

/// Takes the body of a request without reading it. Refuses from the headers alone, as warp's
/// filters do, a request without a `Content-Length` (411) or with one over `limit` (413).
pub(crate) fn pending(
    limit: u64,
) -> impl Filter<Extract = (PendingBody,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::body::content_length_limit(limit)
        .and(warp::header::<u64>("content-length"))
        .and(warp::header::optional::<String>(CONTENT_TYPE.as_str()))
        .and(warp::body::stream().map(boxed))
        .map(
            |declared: u64, content_type: Option<String>, stream: BodyStream| PendingBody {
                stream,
                declared,
                content_type,
            },
        )
}

/// warp's body stream (of an unnameable type) as chunks of `Bytes`.
fn boxed<S, B>(stream: S) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    Box::pin(stream.map_ok(|mut chunk| chunk.copy_to_bytes(chunk.remaining())))
}

impl PendingBody {
    /// The length the client declared (`Content-Length`).
    pub(crate) fn declared_len(&self) -> u64 {
        self.declared
    }

    /// Reads the whole body, which must arrive within `deadline`.
    ///
    /// # Errors
    /// [`BodyError::TimedOut`] or [`BodyError::Failed`].
    pub(crate) async fn read(self, deadline: Duration) -> Result<Bytes, BodyError> {
        let PendingBody {
            mut stream,
            declared,
            ..
        } = self;
        let collect = async move {
            // Usually one chunk: kept as it is. Otherwise the chunks are gathered as they come,
            // never allocated up front from the declared length.
            let mut single: Option<Bytes> = None;
            let mut gathered = BytesMut::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| BodyError::Failed(e.to_string()))?;
                if chunk.is_empty() {
                    continue;
                }
                if gathered.is_empty() && single.is_none() {
                    single = Some(chunk);
                    continue;
                }
                if let Some(first) = single.take() {
                    gathered.extend_from_slice(&first);
                }
                gathered.extend_from_slice(&chunk);
            }
            let body = single.unwrap_or_else(|| gathered.freeze());
            debug_assert!(
                body.len() as u64 <= declared,
                "hyper enforces Content-Length"
            );
            Ok(body)
        };
        tokio::time::timeout(deadline, collect)
            .await
            .map_err(|_| BodyError::TimedOut(deadline))?
    }

    /// Reads the body as JSON: `Content-Type: application/json` (or none), within `deadline`.
    ///
    /// # Errors
    /// As [`PendingBody::read`], or [`BodyError::NotJson`] / [`BodyError::InvalidJson`].
    pub(crate) async fn read_json<T: DeserializeOwned>(
        self,
        deadline: Duration,
    ) -> Result<T, BodyError> {
        let is_json = self.content_type.as_deref().is_none_or(|t| {
            t.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        if !is_json {
            return Err(BodyError::NotJson);
        }
        let body = self.read(deadline).await?;
        serde_json::from_slice(&body).map_err(|e| BodyError::InvalidJson(e.to_string()))
    }
}
