//! The one HTTP client of the tests: a plain HTTP/1.1 request over a fresh TCP connection, so
//! that a test controls every header and byte (an upgrade without upgrading, a body the relay
//! refuses before reading it). Also the URLs of the relay's routes and the `/metrics` text.

use std::net::SocketAddr;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Percent-encodes a room name for a URL path (every byte but ASCII letters and digits), as the
/// stock provider does.
pub fn encode_room(room: &str) -> String {
    utf8_percent_encode(room, NON_ALPHANUMERIC).to_string()
}

/// Percent-encodes a token for a query string.
pub fn encode_query_value(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// The WebSocket URL of a room on the relay at `addr`.
pub fn ws_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/{}", encode_room(room))
}

/// Finds one sample in a Prometheus/OpenMetrics text, e.g. `relay_rooms_loaded` or
/// `relay_disconnects_total{reason="slow_reader"}`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
}

/// The request headers of a WebSocket upgrade (what a browser or the stock client sends).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

fn invalid_data(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// `GET path` ([`http_request`] without headers): the status code and the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let response = http_request(addr, "GET", path, &[], b"").await?;
    let body = String::from_utf8(response.body).map_err(|_| invalid_data("body is not UTF-8"))?;
    Ok((response.status, body))
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test, with the status and the body, if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body (status {}), got {:?}: {e}",
                self.status,
                self.text()
            )
        })
    }
}

/// A minimal HTTP/1.1 request with a binary body: sends `method path` with `headers` (plus
/// `Host` unless `headers` has one, `Content-Length` when there is a body or the method is POST,
/// and `Connection: close` unless `headers` has a `Connection`), then reads one response: exactly
/// `Content-Length` bytes of body, or the chunks of a chunked body, or nothing after a `101` (the
/// connection is then dropped).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A server may answer (413) and close before it reads the body: the answer still counts.
    let _ = stream.write_all(body).await;
    read_http_response(&mut stream).await
}

/// Reads one HTTP/1.1 response from `stream`.
pub async fn read_http_response(stream: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid_data(
                "connection closed before the end of the headers",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid_data("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid_data("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            if let Some(body) = dechunk_bytes(&rest)? {
                break body;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(invalid_data("connection closed inside a chunked body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid_data("bad Content-Length"))?;
        while rest.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(invalid_data("connection closed inside the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest).await?;
        rest
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// De-chunks a complete chunked body; `Ok(None)` when more bytes are needed.
fn dechunk_bytes(mut data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let invalid = || invalid_data("bad chunked body");
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| invalid())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid())?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < start + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}
