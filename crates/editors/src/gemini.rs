//! The `gemini` kind: Google Gemini image models. `POST
//! {base_url}/v1beta/models/{model}:generateContent` with the key in
//! `x-goog-api-key` and the source as inline PNG data; the image comes back
//! inline in `candidates[0].content.parts[]`. The readiness probe is `GET
//! {base_url}/v1beta/models/{model}` (free).

use async_trait::async_trait;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditRequest, Editor, EditorError, Image};
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    body_excerpt, candidate_seed, check_seed, classify_failure, decode_base64_image, endpoint,
    model_name, source_png_base64, Credential, HttpCaller,
};

/// `finishReason`s that mean the model declined on safety grounds. Others
/// without an image (`NO_IMAGE`, `STOP` with text only, `MAX_TOKENS`, ...)
/// are failures, not refusals: rephrasing is not what they call for.
const REFUSAL_REASONS: [&str; 6] = [
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
];

/// Client of the Gemini `generateContent` endpoint for one image model.
#[derive(Debug)]
pub struct GeminiEditor {
    endpoint: Url,
    /// `{base_url}/v1beta/models/{model}`: the free call of the readiness
    /// probe.
    probe_url: Url,
    model: String,
    seed: Option<i64>,
    credential: Credential,
    caller: HttpCaller,
}

impl GeminiEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        check_seed(name, profile)?;
        // Accept the API's own spelling, `models/<id>`, too.
        let mut profile = profile.clone();
        if let Some(m) = &profile.model {
            profile.model = Some(m.trim().trim_start_matches("models/").to_owned());
        }
        let model = model_name(name, &profile)?;
        Ok(Self {
            endpoint: endpoint(
                name,
                &profile,
                &format!("/v1beta/models/{model}:generateContent"),
            )?,
            probe_url: endpoint(name, &profile, &format!("/v1beta/models/{model}"))?,
            model,
            seed: profile.seed,
            credential: Credential::required(
                name,
                &profile,
                HeaderName::from_static("x-goog-api-key"),
                "",
            )?,
            caller: HttpCaller::from_profile(name, &profile)?.with_classifier(classify),
        })
    }

    /// The `generateContent` URL requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The URL the readiness probe GETs (`Editor::probe`).
    pub fn probe_url(&self) -> &Url {
        &self.probe_url
    }

    /// The request body: the instruction, then the source as inline PNG;
    /// the request's `seed`, when it has one, in place of the profile's.
    async fn body(&self, request: &EditRequest<'_>) -> Result<Value, EditorError> {
        let (source, prompt) = (request.source, request.instruction);
        let (data, _, _) = source_png_base64(source, false).await?;
        let mut generation_config = json!({ "responseModalities": ["TEXT", "IMAGE"] });
        if let Some(seed) = candidate_seed(request).or(self.seed) {
            generation_config["seed"] = json!(seed);
        }
        Ok(json!({
            "contents": [{
                "parts": [
                    { "text": prompt },
                    { "inline_data": { "mime_type": "image/png", "data": data } },
                ]
            }],
            "generationConfig": generation_config,
        }))
    }
}

#[async_trait]
impl Editor for GeminiEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.caller
            .run_edit(Some(&self.model), request.turn, async {
                let body = self.body(&request).await?;
                let answer = self
                    .caller
                    .post_json(&self.endpoint, &self.credential, body)
                    .await?;
                let b64 = image_data(&answer)?;
                off_thread(move || decode_base64_image(&b64, "inlineData")).await
            })
            .await
    }

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }

    /// `GET {probe_url}` with the key: free, and it checks the key and the
    /// model at once.
    async fn probe(&self) -> Option<Result<(), EditorError>> {
        Some(
            self.caller
                .probe_get(&self.probe_url, &self.credential)
                .await,
        )
    }
}

/// The base64 image of the first candidate, or why there is none: a
/// blocked prompt or a safety `finishReason` is `Refused`; no candidate, a
/// text-only answer or any other reason is `Invalid`.
fn image_data(answer: &Value) -> Result<String, EditorError> {
    if let Some(reason) = answer
        .pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str)
    {
        let detail = answer
            .pointer("/promptFeedback/blockReasonMessage")
            .and_then(Value::as_str)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Err(EditorError::Refused(format!(
            "the prompt was blocked ({reason}){detail}"
        )));
    }
    let Some(candidate) = answer.pointer("/candidates/0") else {
        return Err(EditorError::Invalid(format!(
            "the model answered with no candidate: {}",
            body_excerpt(answer.to_string().as_bytes())
        )));
    };
    let parts = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // The REST API answers in camelCase; snake_case is accepted too.
    let image = parts.iter().find_map(|p| {
        p.get("inlineData")
            .or_else(|| p.get("inline_data"))
            .and_then(|d| d.get("data"))
            .and_then(Value::as_str)
    });
    if let Some(data) = image {
        return Ok(data.to_owned());
    }
    let text: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    let text = body_excerpt(text.join(" ").as_bytes());
    let reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .unwrap_or("");
    if REFUSAL_REASONS.contains(&reason) {
        let message = candidate
            .get("finishMessage")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(text);
        return Err(EditorError::Refused(format!(
            "the model declined ({reason}): {message}"
        )));
    }
    match reason {
        "" | "STOP" => Err(EditorError::Invalid(format!(
            "the model answered with text only: {text}"
        ))),
        _ => Err(EditorError::Invalid(format!(
            "the model returned no image ({reason}): {text}"
        ))),
    }
}

/// Gemini answers an invalid key with 400 `INVALID_ARGUMENT` and reason
/// `API_KEY_INVALID`: that is `Auth`, not a bad request.
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    let json = serde_json::from_slice::<Value>(body).unwrap_or_default();
    let bad_key = json.pointer("/error/status").and_then(Value::as_str) == Some("UNAUTHENTICATED")
        || json
            .pointer("/error/details")
            .and_then(Value::as_array)
            .is_some_and(|details| {
                details
                    .iter()
                    .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
            });
    if bad_key {
        return EditorError::Auth(format!("HTTP {status}: {}", body_excerpt(body)));
    }
    classify_failure(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_without_an_image() {
        let answer = |reason: &str| json!({"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": reason}]});
        assert!(matches!(
            image_data(&answer("IMAGE_SAFETY")),
            Err(EditorError::Refused(m)) if m.contains("IMAGE_SAFETY")
        ));
        assert!(matches!(
            image_data(&answer("NO_IMAGE")),
            Err(EditorError::Invalid(m)) if m.contains("NO_IMAGE")
        ));
        assert!(matches!(
            image_data(&json!({"candidates": []})),
            Err(EditorError::Invalid(_))
        ));
        assert!(matches!(
            image_data(&json!({"promptFeedback": {"blockReason": "OTHER"}})),
            Err(EditorError::Refused(m)) if m.contains("OTHER")
        ));
    }

    #[test]
    fn an_invalid_key_is_auth() {
        let body = br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, body),
            EditorError::Auth(_)
        ));
        assert!(matches!(
            classify(
                StatusCode::BAD_REQUEST,
                br#"{"error":{"status":"INVALID_ARGUMENT"}}"#
            ),
            EditorError::Invalid(_)
        ));
    }
}
