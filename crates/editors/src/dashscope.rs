//! The `dashscope` kind: Alibaba Qwen-Image-Edit through DashScope's
//! multimodal generation. `POST
//! {base_url}/services/aigc/multimodal-generation/generation` with a bearer
//! key, the source as a PNG data URI and the instruction in one user
//! message; the answer names a signed result URL, downloaded at once.

use async_trait::async_trait;
use editthinker_core::{EditRequest, Editor, EditorError, Image};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    body_excerpt, candidate_seed, check_seed, classify_failure, endpoint, model_name,
    provider_message, source_png_base64, Credential, HttpCaller,
};

/// Client of DashScope's multimodal generation endpoint for one model.
#[derive(Debug)]
pub struct DashscopeEditor {
    endpoint: Url,
    model: String,
    seed: Option<i64>,
    negative_prompt: Option<String>,
    credential: Credential,
    caller: HttpCaller,
}

impl DashscopeEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        check_seed(name, profile)?;
        Ok(Self {
            endpoint: endpoint(
                name,
                profile,
                "/services/aigc/multimodal-generation/generation",
            )?,
            model: model_name(name, profile)?,
            seed: profile.seed,
            negative_prompt: profile.negative_prompt.clone(),
            credential: Credential::required(name, profile, AUTHORIZATION, "Bearer ")?,
            caller: HttpCaller::from_profile(name, profile)?.with_classifier(classify),
        })
    }

    /// The generation URL requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The request body: the source as a PNG data URI, then the
    /// instruction; the request's `seed`, when it has one, in place of the
    /// profile's.
    async fn body(&self, request: &EditRequest<'_>) -> Result<Value, EditorError> {
        let (source, prompt) = (request.source, request.instruction);
        let (data_uri, _, _) = source_png_base64(source, true).await?;
        // No watermark: the output is an intermediate the thinker critiques.
        let mut parameters = json!({ "watermark": false });
        if let Some(seed) = candidate_seed(request).or(self.seed) {
            parameters["seed"] = json!(seed);
        }
        if let Some(negative) = &self.negative_prompt {
            parameters["negative_prompt"] = json!(negative);
        }
        Ok(json!({
            "model": self.model,
            "input": {
                "messages": [{
                    "role": "user",
                    "content": [{ "image": data_uri }, { "text": prompt }],
                }]
            },
            "parameters": parameters,
        }))
    }
}

#[async_trait]
impl Editor for DashscopeEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.caller
            .run_edit(Some(&self.model), request.turn, async {
                let body = self.body(&request).await?;
                let answer = self
                    .caller
                    .post_json(&self.endpoint, &self.credential, body)
                    .await?;
                // Signed and short-lived: fetched now, under the same permit.
                let url = result_url(&answer)?;
                self.caller.download(&url).await
            })
            .await
    }

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }
}

/// The first image URL in `output.choices[0].message.content`; an error
/// `code` in a 2xx answer is classified like a failed one.
fn result_url(answer: &Value) -> Result<String, EditorError> {
    let url = answer
        .pointer("/output/choices/0/message/content")
        .and_then(Value::as_array)
        .and_then(|content| {
            content
                .iter()
                .find_map(|c| c.get("image").and_then(Value::as_str))
        });
    if let Some(url) = url {
        return Ok(url.to_owned());
    }
    let body = answer.to_string();
    if answer.get("code").and_then(Value::as_str).is_some() {
        return Err(classify(StatusCode::BAD_REQUEST, body.as_bytes()));
    }
    Err(EditorError::Invalid(format!(
        "the editor's answer has no output.choices[0].message.content[].image: {}",
        body_excerpt(body.as_bytes())
    )))
}

/// DashScope's error bodies are `{"code", "message", "request_id"}`: content
/// inspection codes are refusals, `InvalidApiKey` and an overdue account
/// (`Arrearage`) need an operator.
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let lower = code.to_ascii_lowercase();
    let message = || format!("HTTP {status}: {} ({code})", provider_message(body));
    if [
        "datainspectionfailed",
        "data_inspection_failed",
        "ipinfringementsuspect",
    ]
    .iter()
    .any(|c| lower.contains(c))
    {
        EditorError::Refused(message())
    } else if lower.contains("invalidapikey") || lower == "arrearage" {
        EditorError::Auth(message())
    } else {
        classify_failure(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        let c = |s: u16, code: &str| {
            classify(
                StatusCode::from_u16(s).unwrap(),
                json!({"code": code, "message": "m", "request_id": "r"})
                    .to_string()
                    .as_bytes(),
            )
        };
        assert!(matches!(
            c(400, "DataInspectionFailed"),
            EditorError::Refused(_)
        ));
        assert!(matches!(
            c(400, "data_inspection_failed"),
            EditorError::Refused(_)
        ));
        assert!(matches!(
            c(400, "IPInfringementSuspect"),
            EditorError::Refused(_)
        ));
        assert!(matches!(c(401, "InvalidApiKey"), EditorError::Auth(_)));
        assert!(matches!(c(400, "Arrearage"), EditorError::Auth(_)));
        assert!(matches!(
            c(400, "InvalidParameter"),
            EditorError::Invalid(_)
        ));
        assert!(matches!(
            c(429, "Throttling.RateQuota"),
            EditorError::Transient(_)
        ));
    }

    #[test]
    fn a_2xx_without_output() {
        assert!(matches!(
            result_url(&json!({"code": "DataInspectionFailed", "message": "m"})),
            Err(EditorError::Refused(_))
        ));
        assert!(matches!(
            result_url(&json!({"output": {}})),
            Err(EditorError::Invalid(_))
        ));
        assert_eq!(
            result_url(&json!({"output": {"choices": [{"message": {"content": [{"text": "t"}, {"image": "http://x/y.png"}]}}]}}))
                .unwrap(),
            "http://x/y.png"
        );
    }
}
