//! The HTTP API (README "HTTP API"): axum routers, request intake, problem
//! responses, SSE and the OpenAPI document. It stores jobs; it never runs them.

pub mod auth;
pub mod direct;
pub mod error;
pub mod events;
pub mod fanout;
pub mod frames;
pub mod intake;
mod jobs;
pub mod server;
mod system;
pub mod ui;
pub mod views;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use editthinker_store::{BlobStore, Store};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

pub use error::{ApiError, Problem};
pub use intake::Limits;
pub use views::EditorView;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Jobs, turns, events.
    pub store: Arc<dyn Store>,
    /// Image bytes.
    pub blobs: Arc<BlobStore>,
    /// Configured editors (for validation and `GET /v1/editors`).
    pub editors: Arc<Vec<EditorView>>,
    /// Whether a thinker is configured; without one, jobs are refused.
    pub thinker_configured: bool,
    /// Whether a webhook secret is configured; without one, jobs with a
    /// webhook are refused.
    pub webhooks_configured: bool,
    /// How long finished jobs are kept (`expires_at`); `None`: for ever.
    pub retention: Option<std::time::Duration>,
    /// Browser origins allowed to call the API (CORS); empty: none.
    pub cors_allowed_origins: Vec<HeaderValue>,
    /// Input limits.
    pub limits: Limits,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: u32,
    /// Authentication and the per-caller limits of this process.
    pub auth: Arc<auth::Auth>,
    /// Jobs a tenant may have queued or running at once (checked in the
    /// database, so across replicas); `None`: no limit.
    pub max_active_jobs_per_tenant: Option<u32>,
    /// This process's fan-out of job events to SSE streams (they end when
    /// the hub's shutdown token fires).
    pub hub: Arc<fanout::EventHub>,
    /// Whether event streams may be handed to the hub's writer threads
    /// once their replay is sent (`[http] sse_direct_writes`); `false`:
    /// hyper writes every event.
    pub sse_direct_writes: bool,
}

impl AppState {
    /// Configured editor names, comma-separated (for messages).
    pub fn editor_names(&self) -> String {
        self.editors
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "EditThinker Service",
        description = "Think-while-Edit jobs: an editor edits, a vision-language thinker critiques and refines the instruction, repeat until good. Every turn streams over SSE."
    ),
    paths(
        jobs::create_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        jobs::list_webhook_deliveries,
        jobs::retry_job,
        jobs::source_image,
        jobs::turn_image,
        jobs::result_image,
        events::job_events,
        system::list_editors,
        system::healthz,
        system::readyz,
    ),
    components(schemas(
        views::Job,
        jobs::StatusFilter,
        views::JobSummary,
        views::JobList,
        views::Turn,
        views::CritiqueView,
        views::JobResult,
        views::JobErrorView,
        views::EditorView,
        views::EditorList,
        intake::CreateJobRequest,
        intake::ImageInput,
        intake::WebhookInput,
        views::DeliveryList,
        views::Delivery,
        system::Readiness,
        error::Problem,
        editthinker_core::JobOptions,
        editthinker_core::StopThresholds,
        editthinker_core::Selection,
    )),
    modifiers(&AuthDoc)
)]
pub struct ApiDoc;

/// Adds what every authenticated route shares to the document: the bearer
/// scheme, and the 401 and 429 answers of [`auth::authenticate`]. The open
/// routes say they need no credentials.
struct AuthDoc;

impl utoipa::Modify for AuthDoc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("et_…")
                    .description(Some(
                        "With `[auth] mode = \"api_keys\"`: a key from `editthinker keys create`. Gateway mode takes the tenant from the gateway's header instead; mode `none` takes nothing.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                if !path.starts_with("/v1/") {
                    // Open: an empty requirement means "no credentials".
                    operation.security = Some(vec![SecurityRequirement::default()]);
                    continue;
                }
                let responses = &mut operation.responses.responses;
                responses.entry("401".into()).or_insert_with(|| {
                    problem(
                        "Missing or bad credentials (`unauthorized`, `WWW-Authenticate: Bearer`)",
                    )
                    .into()
                });
                responses.entry("429".into()).or_insert_with(|| {
                    problem("A limit was reached (`rate_limited`); `Retry-After` says when to try again").into()
                });
                responses.entry("431".into()).or_insert_with(|| {
                    problem("The request's headers are over `[limits] max_header_bytes`").into()
                });
            }
        }
    }
}

/// Links from a created job (`POST /v1/jobs`) to every per-job operation,
/// so clients and fuzzers can follow the id. Written into the JSON (utoipa
/// spells a link's `operationId` in snake case).
fn add_job_links(doc: &mut serde_json::Value) {
    let mut links = serde_json::Map::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            // A turn's image exists only once the worker has made it: a
            // link would promise a resource creation does not.
            if !path.starts_with("/v1/jobs/{id}") || path.contains("{n}") {
                continue;
            }
            for operation in ["get", "post"].iter().filter_map(|m| item.get(*m)) {
                let Some(id) = operation["operationId"].as_str() else {
                    continue;
                };
                let parameters = serde_json::json!({"id": "$response.body#/id"});
                links.insert(
                    id.to_string(),
                    serde_json::json!({"operationId": id, "parameters": parameters}),
                );
            }
        }
    }
    for status in ["200", "202"] {
        let response = &mut doc["paths"]["/v1/jobs"]["post"]["responses"][status];
        if response.is_object() {
            response["links"] = serde_json::Value::Object(links.clone());
        }
    }
}

/// The OpenAPI document as pretty JSON (what `openapi/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    add_job_links(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    // Room for a base64-encoded image at the byte limit plus the other fields.
    let body_limit = state.limits.max_image_bytes / 3 * 4 + 1024 * 1024;
    Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/events", get(events::job_events))
        .route("/v1/jobs/{id}/webhooks", get(jobs::list_webhook_deliveries))
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route("/v1/jobs/{id}/source", get(jobs::source_image))
        .route("/v1/jobs/{id}/turns/{n}/image", get(jobs::turn_image))
        .route("/v1/jobs/{id}/result", get(jobs::result_image))
        .route("/v1/editors", get(system::list_editors))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/openapi.json", get(system::openapi))
        .route("/docs", get(ui::docs))
        .route("/ui", get(ui::home))
        .route("/ui/jobs/{id}", get(ui::job))
        .route("/ui/assets/{name}", get(ui::asset))
        .fallback(system::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside CORS, so preflight requests need no credentials.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(cors(&state.cors_allowed_origins))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Adds the headers every response carries (issue 20, finding 11):
/// `X-Content-Type-Options: nosniff`, so a browser never runs an image or
/// a JSON body as something else, and `Referrer-Policy: no-referrer`, so
/// the viewer's URLs (job ids) never leave in a `Referer`. Outermost, so
/// problem bodies, images, SSE heads and 404s all get them; the metrics
/// listener uses it too.
pub async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        axum::http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The span of one request (`http.request`): a child of the caller's
/// `traceparent` when it sends one, named by the route template.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(UNMATCHED_ROUTE, |p| p.as_str());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {route}", editthinker_core::metrics::method_label(request.method().as_str())),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        url.path = request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(editthinker_core::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    editthinker_core::trace::continue_trace(&span, traceparent);
    if let Some(id) = editthinker_core::trace::trace_id_of_span(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Records every answered request in the HTTP metrics, by route template
/// (requests that match no route share one label value).
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    editthinker_core::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The `route` label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// CORS for the configured browser origins, SSE included: the request
/// headers the API reads and the response headers clients need to see.
fn cors(origins: &[HeaderValue]) -> CorsLayer {
    use axum::http::{header, Method};
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("prefer"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static("preference-applied"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}
