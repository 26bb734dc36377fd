//! Editors, health, readiness and API documentation.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::views::EditorList;
use crate::{AppState, ThinkerSetup};

/// Readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether this process can serve: database reachable, migrations applied.
    pub ready: bool,
    /// `ok`, or what is wrong with the database.
    pub database: String,
    /// With a worker in this process (`serve`): `ok`, `checking`, or
    /// `unreachable: <reason>` (the worker's last probe; it claims no jobs
    /// meanwhile). In an `api` process: `configured`, `sandbox …`, or what
    /// to configure.
    pub thinker: String,
    /// Configured editor names, or what to configure.
    pub editors: String,
    /// With a worker in this process (`serve`): each editor's last probe,
    /// `ok`, `unreachable: <reason>`, or `not checked` (its API offers no
    /// free call). `null` in an `api` process.
    pub editor_checks: Option<std::collections::BTreeMap<String, String>>,
}

/// Configured editors.
#[utoipa::path(get, path = "/v1/editors", tag = "editors",
    responses((status = 200, body = EditorList)))]
pub async fn list_editors(State(state): State<AppState>) -> Json<EditorList> {
    Json(EditorList {
        editors: state.editors.as_ref().clone(),
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers and migrations are applied. The body
/// also says whether a thinker and editors are configured.
#[utoipa::path(get, path = "/readyz", tag = "system", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = match state.store.ready().await {
        Ok(true) => "ok".to_string(),
        Ok(false) => "migrations not applied: run `editthinker migrate`".to_string(),
        Err(e) => format!("unreachable: {e}"),
    };
    let ready = database == "ok";
    let probes = state.provider_probes.as_ref().map(|p| p());
    let editor_checks = probes.as_ref().map(|p| {
        p.editors
            .iter()
            .map(|(name, check)| {
                let said = match check {
                    None => "not checked".to_string(),
                    Some(Ok(())) => "ok".to_string(),
                    Some(Err(reason)) => format!("unreachable: {reason}"),
                };
                (name.clone(), said)
            })
            .collect()
    });
    let report = Readiness {
        ready,
        database,
        thinker: match (state.thinker, probes.map(|p| p.thinker)) {
            (ThinkerSetup::Missing, _) => {
                "not configured: set [thinker] in the configuration".into()
            }
            (ThinkerSetup::Sandbox, Some(Some(Ok(())))) => {
                "ok (sandbox: test mode, critiques are made up)".into()
            }
            (_, Some(Some(Ok(())))) => "ok".into(),
            (_, Some(Some(Err(reason)))) => format!("unreachable: {reason}"),
            (_, Some(None)) => "checking".into(),
            (ThinkerSetup::Model, None) => "configured".into(),
            (ThinkerSetup::Sandbox, None) => "sandbox (test mode: critiques are made up)".into(),
        },
        editors: if state.editors.is_empty() {
            "none configured: add an [editors.<name>] section".into()
        } else {
            state.editor_names()
        },
        editor_checks,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// The OpenAPI document.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
        .into_response()
}

/// A `405` that axum's method router answered with an empty body becomes
/// a problem body, like every other error (the router adds `Allow` on its
/// way out, after this layer).
pub async fn method_not_allowed_problem(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if response.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return response;
    }
    ApiError::MethodNotAllowed {
        method: crate::json_terms::cut_quotes(&format!("`{method}`")),
        path: crate::json_terms::cut_quotes(&format!("`{path}`")),
    }
    .into_response()
}

/// Unknown paths answer a problem too.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
