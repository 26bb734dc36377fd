//! The web viewer (`/ui`, `/ui/jobs/{id}`) and the API reader (`/docs`):
//! static pages and scripts compiled into the binary (`crates/api/ui/`),
//! nothing fetched at run time. The pages call the API like any client;
//! they are open routes, and the API asks for a key when auth is on.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("../ui/index.html");
const DOCS: &str = include_str!("../ui/docs.html");
const APP_JS: &str = include_str!("../ui/app.js");
const DOCS_JS: &str = include_str!("../ui/docs.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// Only our own scripts and styles; images also from `blob:` (the viewer
/// fetches images with the key and shows them as blobs).
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(html: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        html,
    )
        .into_response()
}

/// The viewer with `root`, the relative way from the page back to the
/// service's root (so it works under a gateway's path prefix).
fn viewer(root: &str) -> Response {
    page(INDEX.replace("__ROOT__", root))
}

/// `GET /ui`: submit a job, recent jobs.
pub async fn home() -> Response {
    viewer(".")
}

/// `GET /ui/jobs/{id}`: one job, every turn, live.
pub async fn job(Path(_id): Path<String>) -> Response {
    viewer("../..")
}

/// `GET /docs`: a reader of the OpenAPI document.
pub async fn docs() -> Response {
    page(DOCS.to_string())
}

/// `GET /ui/assets/{name}`: the scripts and the style sheet.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "docs.js" => (DOCS_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::NotFound(format!("no asset {name}"))),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
