//! The `fal` kind: fal.ai's queue API. `POST {base_url}/{model}` (e.g.
//! `fal-ai/flux-pro/kontext`) with `Authorization: Key <key>` and the
//! source as a PNG data URI in `image_url`; the answer is `{"request_id",
//! "status_url", "response_url", "cancel_url"}`. `status_url` answers 202
//! while `IN_QUEUE`/`IN_PROGRESS` and 200 at `COMPLETED`; then
//! `response_url` holds the model's output (`images[].url`) or its error.
//! `PUT cancel_url` stops a request the job no longer wants. The URLs fal
//! returns are used as given, never built.
//!
//! The submission is paid and fal documents no idempotency key for it, so
//! an ambiguous failure of the submit is not resent (see
//! `http_common`); polls and downloads are GETs and are retried.

use async_trait::async_trait;
use editthinker_core::{EditRequest, Editor, EditorError, Image, ProviderRequest};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    body_excerpt, check_output_format, check_safety_tolerance, check_seed, classify_failure,
    endpoint, model_name, says_refused, source_png_base64, Credential, HttpCaller,
};
use crate::polling::{
    edit_async, failure_text, handle_url, required_str, required_url, url_at, AsyncProvider, Poll,
    Waiting,
};

/// Client of one fal model through the queue.
#[derive(Debug)]
pub struct FalEditor {
    endpoint: Url,
    model: String,
    /// The optional input fields that are configured.
    options: Vec<(&'static str, Value)>,
    credential: Credential,
    caller: HttpCaller,
    waiting: Waiting,
}

impl FalEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        check_seed(name, profile)?;
        if let Some(g) = profile
            .guidance_scale
            .filter(|g| !g.is_finite() || *g <= 0.0)
        {
            return Err(EditorConfigError::invalid(
                name,
                "guidance_scale",
                format!("{g}: must be a positive number"),
            ));
        }
        if profile.num_inference_steps == Some(0) {
            return Err(EditorConfigError::invalid(
                name,
                "num_inference_steps",
                "must be at least 1",
            ));
        }
        // fal's FLUX Kontext endpoints take "1" (strict) to "6", as strings.
        let safety = check_safety_tolerance(name, profile, 1..=6)?;
        let options = [
            ("seed", profile.seed.map(Value::from)),
            ("guidance_scale", profile.guidance_scale.map(Value::from)),
            (
                "num_inference_steps",
                profile.num_inference_steps.map(Value::from),
            ),
            (
                "output_format",
                check_output_format(name, profile)?.map(Value::from),
            ),
            (
                "safety_tolerance",
                safety.map(|t| Value::from(t.to_string())),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let model = model_name(name, profile)?;
        let caller = HttpCaller::from_profile(name, profile)?.with_classifier(classify);
        Ok(Self {
            endpoint: endpoint(name, profile, &format!("/{model}"))?,
            model,
            options,
            credential: Credential::required(name, profile, AUTHORIZATION, "Key ")?,
            waiting: Waiting::from_profile(name, profile)?,
            caller,
        })
    }

    /// The submission URL.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The model input: the source as a PNG data URI, the prompt, the
    /// configured options, and the request's `seed` in place of the
    /// profile's when it has one.
    async fn body(
        &self,
        source: &Image,
        prompt: &str,
        seed: Option<i64>,
    ) -> Result<Value, EditorError> {
        let (data_uri, _, _) = source_png_base64(source, true).await?;
        let mut body = json!({ "prompt": prompt, "image_url": data_uri });
        for (key, value) in &self.options {
            body[*key] = value.clone();
        }
        if let Some(seed) = seed {
            body["seed"] = Value::from(seed);
        }
        Ok(body)
    }
}

#[async_trait]
impl AsyncProvider for FalEditor {
    async fn submit(
        &self,
        source: &Image,
        instruction: &str,
        seed: Option<i64>,
    ) -> Result<ProviderRequest, EditorError> {
        let body = self.body(source, instruction, seed).await?;
        let answer = self
            .caller
            .post_json(&self.endpoint, &self.credential, body)
            .await?;
        let id = required_str(&answer, "/request_id")?;
        let mut data = json!({});
        for key in ["status_url", "response_url"] {
            let url = required_url(&answer, &format!("/{key}"))?;
            data[key] = Value::from(url.as_str());
        }
        // Only needed to cancel: a submission without it still counts.
        if let Some(url) = url_at(&answer, "/cancel_url") {
            data["cancel_url"] = Value::from(url.as_str());
        }
        Ok(ProviderRequest {
            id: id.to_owned(),
            data,
        })
    }

    async fn poll(&self, handle: &ProviderRequest) -> Result<Poll, EditorError> {
        let (status_url, response_url) = match (
            handle_url(handle, "/status_url"),
            handle_url(handle, "/response_url"),
        ) {
            (Ok(s), Ok(r)) => (s, r),
            (Err(gone), _) | (_, Err(gone)) => return Ok(gone),
        };
        let Some(status) = self.caller.get_json(&status_url, &self.credential).await? else {
            return Ok(Poll::Gone(format!(
                "the status of {} answered 404",
                handle.id
            )));
        };
        match required_str(&status, "/status")? {
            "COMPLETED" => {}
            other => return Ok(Poll::Pending(other.to_owned())),
        }
        // A failed run is COMPLETED too, with its error in the status.
        if status.get("error").is_some_and(|e| !e.is_null()) {
            let body = status.to_string();
            return Err(completed_failure(&body));
        }
        // The output is kept for a limited time (fal: 1 h; 6 min when large).
        let Some(output) = self
            .caller
            .get_json(&response_url, &self.credential)
            .await?
        else {
            return Ok(Poll::Gone(format!(
                "the result of {} is no longer available",
                handle.id
            )));
        };
        output_url(&output).map(Poll::Ready)
    }
}

#[async_trait]
impl Editor for FalEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        edit_async(self, &self.caller, &self.model, self.waiting, request).await
    }

    /// `PUT` to the request's stored `cancel_url`: fal drops a queued
    /// request and signals a running one to stop. A handle without one
    /// (stored by an older version) has nothing to call: success.
    async fn cancel(&self, request: &ProviderRequest) -> Result<(), EditorError> {
        let Some(url) = url_at(&request.data, "/cancel_url") else {
            tracing::info!(request_id = %request.id, "no cancel_url stored; nothing to cancel");
            return Ok(());
        };
        self.caller
            .cancel(Method::PUT, &url, &self.credential, &request.id)
            .await
    }

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }
}

/// The first image URL of a model output; an output fal's safety checker
/// flagged (`has_nsfw_concepts`) is a refusal (conservative: whether the
/// image is then blanked is unconfirmed, and either way it is not the edit).
fn output_url(output: &Value) -> Result<String, EditorError> {
    let flagged = output
        .get("has_nsfw_concepts")
        .and_then(Value::as_array)
        .is_some_and(|flags| flags.iter().any(|f| f.as_bool() == Some(true)));
    if flagged {
        return Err(EditorError::Refused(
            "fal's safety checker flagged the output (has_nsfw_concepts)".into(),
        ));
    }
    required_str(output, "/images/0/url").map(str::to_owned)
}

/// The error of a run that completed with one (in the status, or as the
/// failed answer of `response_url`), classified like a failed request.
fn completed_failure(body: &str) -> EditorError {
    classify(StatusCode::UNPROCESSABLE_ENTITY, body.as_bytes())
}

/// fal's failed answers: validation errors are `{"detail": [{"loc", "msg",
/// "type"}]}` where a `type` like `content_policy_violation` is a refusal;
/// `error_type` carries the same in a completed status. Locked accounts
/// (exhausted balance) answer 403: `Auth`, as usual.
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let details: Vec<&Value> = match json.get("detail") {
        Some(Value::Array(items)) => items.iter().collect(),
        _ => vec![&json],
    };
    let refused = details.iter().any(|d| {
        ["type", "error_type"]
            .iter()
            .filter_map(|k| d.get(*k).and_then(Value::as_str))
            .any(says_refused)
    });
    if refused && !status.is_server_error() {
        let messages: Vec<String> = details
            .iter()
            .map(|d| failure_text(d, &["msg", "error", "detail"]))
            .collect();
        return EditorError::Refused(format!("HTTP {status}: {}", messages.join("; ")));
    }
    match classify_failure(status, body) {
        EditorError::Invalid(_) if json.get("error").is_some() => EditorError::Invalid(format!(
            "the run failed: {}",
            body_excerpt(failure_text(&json, &["error"]).as_bytes())
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_policy_is_refused() {
        let body = json!({"detail": [{"loc": ["body", "prompt"], "msg": "The content could not be processed because it contained material flagged by a content checker.", "type": "content_policy_violation"}]});
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, body.to_string().as_bytes()),
            EditorError::Refused(m) if m.contains("content checker")
        ));
        let completed = json!({"status": "COMPLETED", "error": "flagged", "error_type": "content_policy_violation"});
        assert!(matches!(
            completed_failure(&completed.to_string()),
            EditorError::Refused(m) if m.contains("flagged")
        ));
        let other = json!({"detail": [{"loc": ["body", "image_url"], "msg": "bad image", "type": "image_load_error"}]});
        assert!(matches!(
            classify(
                StatusCode::UNPROCESSABLE_ENTITY,
                other.to_string().as_bytes()
            ),
            EditorError::Invalid(_)
        ));
        let failed =
            json!({"status": "COMPLETED", "error": "runner crashed", "error_type": "runner_error"});
        assert!(matches!(
            completed_failure(&failed.to_string()),
            EditorError::Invalid(m) if m.contains("runner crashed")
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, b"{}"),
            EditorError::Auth(_)
        ));
    }

    #[test]
    fn outputs() {
        assert_eq!(
            output_url(&json!({"images": [{"url": "https://f/a.png", "width": 8, "height": 8}], "has_nsfw_concepts": [false]}))
                .unwrap(),
            "https://f/a.png"
        );
        assert!(matches!(
            output_url(
                &json!({"images": [{"url": "https://f/a.png"}], "has_nsfw_concepts": [true]})
            ),
            Err(EditorError::Refused(_))
        ));
        assert!(matches!(
            output_url(&json!({"images": []})),
            Err(EditorError::Invalid(_))
        ));
    }
}
