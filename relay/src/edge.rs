//! What every HTTP route needs at the edge: reading the room name and the token from a request,
//! and the two shapes of an error answer (JSON for the API and refusals, plain text for the rest).
//! The route modules use these and not each other.

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use warp::reply::{Reply, Response};

/// Longest room name, in bytes (after percent-decoding).
pub(crate) const MAX_ROOM_NAME_BYTES: usize = 512;

/// Decodes and checks a room name taken from a request path or query.
///
/// # Errors
/// A message for the client when the name is empty, too long, not UTF-8 or holds control
/// characters.
pub(crate) fn room_name(path: &str) -> Result<String, &'static str> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "room name is not valid UTF-8")?;
    if name.is_empty() {
        return Err("missing room name: connect to /<room>");
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err("room name is longer than 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("room name contains control characters");
    }
    Ok(name.into_owned())
}

/// The token of a request: the `token` query parameter (how the stock y-websocket provider passes
/// `params`) or an `Authorization: Bearer` header.
pub(crate) fn request_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == "token").then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    from_query.or_else(|| {
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned())
    })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON error answer: `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&ErrorBody { error: message }), status)
        .into_response()
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, status).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_percent_decoded_and_checked() {
        assert_eq!(room_name("/notes%2Fmonday").as_deref(), Ok("notes/monday"));
        assert_eq!(room_name("/a/b c").as_deref(), Ok("a/b c"));
        assert_eq!(room_name("/caf%C3%A9").as_deref(), Ok("café"));
        assert!(room_name("/").is_err());
        assert!(room_name("/%FF").is_err());
        assert!(room_name("/a%00b").is_err());
        assert!(room_name(&format!("/{}", "x".repeat(513))).is_err());
        assert!(room_name(&format!("/{}", "x".repeat(512))).is_ok());
    }

    #[test]
    fn token_comes_from_the_query_or_the_bearer_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_token(Some("a=1&token=abc%2Edef"), &headers).as_deref(),
            Some("abc.def")
        );
        assert_eq!(request_token(Some("a=1"), &headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(request_token(None, &headers).as_deref(), Some("xyz"));
        assert_eq!(
            request_token(Some("token=q"), &headers).as_deref(),
            Some("q")
        );
    }
}
