//! The demo apps, compiled into the binary from `examples/dist` (a committed build output).
//!
//! Pages of the single-page app (`/`, `/docs/...`, `/chat/...`) all get `index.html`; other paths
//! get the file of that name. Files are revalidated with their SHA-256 as the `ETag`, so the
//! service worker and the browser cache never serve a stale build after an upgrade.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, StatusCode};
use rust_embed::RustEmbed;
use warp::reply::Response;

#[derive(RustEmbed)]
#[folder = "../examples/dist/"]
struct Dist;

/// Path prefixes of the single-page app, all served by `index.html`.
const APP_PAGES: &[&str] = &["docs", "chat"];

/// The response for `GET path`, or `None` when there is no such file or page.
pub(crate) fn serve(path: &str, headers: &HeaderMap) -> Option<Response> {
    let path = path.trim_start_matches('/');
    let file = if path.is_empty() || is_app_page(path) {
        "index.html"
    } else {
        path
    };
    let asset = Dist::get(file)?;
    let etag = format!("\"{}\"", hex(&asset.metadata.sha256_hash()));
    let not_modified = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if not_modified {
        let mut r = Response::default();
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(asset.data.into_owned().into());
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_str(asset.metadata.mimetype())
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    Some(response)
}

fn is_app_page(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or_default();
    APP_PAGES.contains(&first)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_pages_get_the_index_and_unknown_files_nothing() {
        let empty = HeaderMap::new();
        let index = serve("/", &empty).expect("index");
        assert_eq!(index.status(), StatusCode::OK);
        assert!(
            index.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/html")
        );
        for page in ["/docs", "/docs/meeting%20notes", "/chat/general"] {
            let page = serve(page, &empty).expect("page");
            assert_eq!(page.headers()[ETAG], index.headers()[ETAG]);
        }
        assert!(serve("/no-such-file.js", &empty).is_none());
    }

    #[test]
    fn matching_etag_gets_304() {
        let first = serve("/", &HeaderMap::new()).expect("index");
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, first.headers()[ETAG].clone());
        assert_eq!(
            serve("/", &headers).expect("index").status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
