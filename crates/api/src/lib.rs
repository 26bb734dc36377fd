//! The HTTP API (docs/api.md): axum routers, request intake, problem
//! responses, SSE and the OpenAPI document. It stores jobs; it never runs them.

pub mod auth;
pub mod contract;
pub mod direct;
pub mod error;
pub mod events;
pub mod fanout;
pub mod headroom;
pub mod intake;
mod jobs;
pub mod json_terms;
pub mod positions;
pub mod server;
pub mod stream_event;
mod system;
pub mod ui;
mod usage;
pub mod views;
mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::get;
use axum::Router;
use editthinker_store::{BlobStore, Store};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The thinker the workers run, as far as this process's
    /// configuration says.
    pub thinker: ThinkerSetup,
    /// The last probes of the providers by this process's worker, for
    /// `/readyz`; `None` in a process that runs no worker (`api`).
    pub provider_probes: Option<ProviderProbes>,
    /// The configuration's `currency` (of usage without any calls).
    pub currency: String,
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
    /// This process's snapshot of queue positions, for job reads.
    pub positions: Arc<positions::QueuePositions>,
    /// What this process knows of each tenant's active jobs, to skip the
    /// limit's pre-check for tenants well under it.
    pub headroom: Arc<headroom::Headroom>,
}

/// What a worker last found when it probed its providers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The thinker: `None` before the first probe, else `Ok` or the reason
    /// it is unreachable.
    pub thinker: Option<Result<(), String>>,
    /// Each editor by name: `None` when its API offers no free call (or
    /// before its first probe), else `Ok` or the reason.
    pub editors: std::collections::BTreeMap<String, Option<Result<(), String>>>,
}

/// Reads a worker's last [`ProbeReport`].
pub type ProviderProbes = Arc<dyn Fn() -> ProbeReport + Send + Sync>;

/// What the API knows of the thinker the workers run (from the same
/// configuration; API replicas build no thinker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkerSetup {
    /// No `[thinker]` section: jobs are refused (`503 not_configured`).
    Missing,
    /// A model, remote or in-process.
    Model,
    /// The sandbox thinker (test mode): every job is labelled `sandbox`.
    Sandbox,
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

    /// Whether a job on editor `editor` runs on a sandbox provider: the
    /// one rule behind the job's `sandbox` label.
    pub fn runs_sandbox(&self, editor: &str) -> bool {
        self.thinker == ThinkerSetup::Sandbox
            || self.editors.iter().any(|e| e.name == editor && e.sandbox)
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "EditThinker Service",
        description = "Think-while-Edit jobs: an editor edits, a vision-language thinker critiques and refines the instruction, repeat until good. Every turn streams over SSE."
    ),
    components(schemas(
        views::Job,
        editthinker_store::JobStatus,
        editthinker_store::DeliveryStatus,
        editthinker_core::StopReason,
        editthinker_core::ErrorCode,
        views::JobSummary,
        views::JobList,
        views::Turn,
        views::Candidate,
        views::CritiqueView,
        editthinker_core::VerifierScore,
        views::JobResult,
        views::JobErrorView,
        views::EditorView,
        views::EditorList,
        intake::CreateJobRequest,
        intake::CreateJobForm,
        intake::ImageInput,
        intake::WebhookInput,
        views::DeliveryList,
        views::Delivery,
        system::Readiness,
        error::Problem,
        editthinker_core::JobOptions,
        editthinker_core::StopThresholds,
        editthinker_core::Selection,
        editthinker_core::History,
        editthinker_core::Budget,
        editthinker_core::RankBy,
        editthinker_core::Usage,
        views::RefusalView,
        contract::EventType,
        contract::RetryReason,
        contract::JobQueuedData,
        contract::JobStartedData,
        contract::JobRetryingData,
        contract::TurnEditedData,
        contract::TurnCritiquedData,
        contract::TurnChosenData,
        contract::JobSucceededData,
        contract::JobFailedData,
        contract::JobCanceledData,
        contract::TurnThinkingData,
        contract::WebhookEvent,
    ))
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
        use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
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
                let limited = responses.entry("429".into()).or_insert_with(|| {
                    problem("A limit was reached (`rate_limited`); `Retry-After` says when to try again").into()
                });
                if let utoipa::openapi::RefOr::T(limited) = limited {
                    limited.headers.insert(
                        "Retry-After".into(),
                        HeaderBuilder::new()
                            .schema(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::Integer)
                                    .minimum(Some(0)),
                            )
                            .description(Some("Seconds until a retry may succeed"))
                            .build(),
                    );
                }
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

/// The routes, each API operation served and documented by one
/// `routes!` line (its `#[utoipa::path]` names the path), so no handler is
/// served undocumented; the pages in [`UNDOCUMENTED_ROUTES`] are added
/// with plain `route`.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::list_webhook_deliveries))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::source_image))
        .routes(routes!(jobs::turn_image))
        .routes(routes!(jobs::candidate_image))
        .routes(routes!(jobs::result_image))
        .routes(routes!(events::job_events))
        .routes(routes!(usage::tenant_usage))
        .routes(routes!(system::list_editors))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .route("/openapi.json", get(system::openapi))
        .route("/docs", get(ui::docs))
        .route("/ui", get(ui::home))
        .route("/ui/jobs/{id}", get(ui::job))
        .route("/ui/assets/{name}", get(ui::asset))
}

/// Routes served but not in the document: the document itself and the
/// browser pages (HTML and assets), none of them API operations.
pub const UNDOCUMENTED_ROUTES: [&str; 5] = [
    "/openapi.json",
    "/docs",
    "/ui",
    "/ui/jobs/{id}",
    "/ui/assets/{name}",
];

/// The OpenAPI document: [`ApiDoc`] with the paths of [`routes`] and
/// what every authenticated route shares ([`AuthDoc`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    utoipa::Modify::modify(&AuthDoc, &mut doc);
    doc
}

/// The OpenAPI document as pretty JSON (what `openapi/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = serde_json::to_value(openapi()).expect("the OpenAPI document serializes");
    add_job_links(&mut doc);
    contract::describe_events_and_images(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}

/// The largest request body: room for a base64-encoded image at
/// `[limits] max_image_bytes` plus 1 MiB for the other fields.
pub fn body_limit(limits: &intake::Limits) -> usize {
    limits.max_image_bytes / 3 * 4 + 1024 * 1024
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let body_limit = body_limit(&state.limits);
    let (routes, _) = routes().split_for_parts();
    routes
        .fallback(system::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside CORS, so preflight requests need no credentials.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(cors(&state.cors_allowed_origins))
        // No failure log here: an internal error is logged where it happens
        // (`ApiError::Internal`), and an expected 503 (`not_configured`)
        // is not an error of this process.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::from_fn(
            system::method_not_allowed_problem,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The paths a router serves, read from its `Debug` form (axum has no
    /// other way to list them): every quoted string that starts with `/`
    /// in the path router's part.
    fn served_paths(router: &Router<AppState>) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        let paths = debug
            .split("fallback_router")
            .next()
            .expect("the path router comes first");
        paths
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with('/'))
            .map(str::to_owned)
            .collect()
    }

    /// Served paths missing from the document, less the known pages.
    fn undocumented(routes: OpenApiRouter<AppState>) -> Vec<String> {
        let (router, doc) = routes.split_for_parts();
        let served = served_paths(&router);
        assert!(served.contains("/v1/jobs/{id}/events"), "{served:?}");
        served
            .into_iter()
            .filter(|p| !doc.paths.paths.contains_key(p))
            .filter(|p| !UNDOCUMENTED_ROUTES.contains(&p.as_str()))
            .collect()
    }

    #[test]
    fn every_served_route_is_documented() {
        assert_eq!(undocumented(routes()), Vec::<String>::new());
        let (router, _) = routes().split_for_parts();
        let served = served_paths(&router);
        let documented: BTreeSet<String> = openapi().paths.paths.keys().cloned().collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            unserved.is_empty(),
            "documented but not served: {unserved:?}"
        );
        for page in UNDOCUMENTED_ROUTES {
            assert!(
                served.contains(page),
                "{page} is listed as a page but not served"
            );
        }
    }

    /// The SSE modules and their sources.
    const SSE_MODULES: [(&str, &str); 6] = [
        ("stream_event", include_str!("stream_event.rs")),
        ("wire", include_str!("wire.rs")),
        ("events", include_str!("events.rs")),
        ("fanout", include_str!("fanout.rs")),
        ("direct", include_str!("direct.rs")),
        ("jobs", include_str!("jobs.rs")),
    ];

    /// The SSE modules that `source` names as `crate::module` (in `use`
    /// lines, `use crate::{a, b}` included, or in paths), comments aside.
    fn sse_modules_used(source: &str) -> BTreeSet<&'static str> {
        let mut used = BTreeSet::new();
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (_, rest) in code
                .match_indices("crate::")
                .map(|(at, _)| code.split_at(at + 7))
            {
                let names = match rest.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or_default(),
                    None => rest,
                };
                for name in names.split(',') {
                    let name: String = name
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if let Some((module, _)) = SSE_MODULES.iter().find(|(m, _)| *m == name) {
                        used.insert(*module);
                    }
                }
            }
        }
        used
    }

    /// A path of imports from `from` back to `from`, if any.
    fn cycle_from(
        from: &'static str,
        at: &'static str,
        graph: &std::collections::BTreeMap<&'static str, BTreeSet<&'static str>>,
        path: &mut Vec<&'static str>,
    ) -> bool {
        path.push(at);
        for next in &graph[at] {
            if *next == from || (!path.contains(next) && cycle_from(from, next, graph, path)) {
                path.push(next);
                return true;
            }
        }
        path.pop();
        false
    }

    #[test]
    fn the_sse_modules_import_one_another_in_no_cycle() {
        let graph: std::collections::BTreeMap<_, _> = SSE_MODULES
            .iter()
            .map(|(module, source)| (*module, sse_modules_used(source)))
            .collect();
        for module in graph.keys() {
            let mut path = Vec::new();
            assert!(
                !cycle_from(module, module, &graph, &mut path),
                "an import cycle: {path:?}"
            );
        }
        // Only the writers see the wire form.
        for module in ["stream_event", "fanout", "jobs"] {
            assert!(!graph[module].contains("wire"), "{module} uses wire");
        }
        assert!(graph["wire"].contains("stream_event"), "{graph:?}");
        // The check sees grouped imports and cycles.
        assert_eq!(
            sse_modules_used(
                "use crate::{wire, error::X};\nlet _ = crate::jobs::f(); // crate::fanout"
            ),
            BTreeSet::from(["wire", "jobs"])
        );
        let looped = std::collections::BTreeMap::from([
            ("a", BTreeSet::from(["b"])),
            ("b", BTreeSet::from(["a"])),
        ]);
        assert!(cycle_from("a", "a", &looped, &mut Vec::new()));
    }

    #[test]
    fn a_route_added_without_routes_is_reported() {
        async fn hidden() {}
        let routes = routes().route("/v1/hidden", get(hidden));
        assert_eq!(undocumented(routes), vec!["/v1/hidden".to_string()]);
    }
}
