//! The `openai` kind: OpenAI image edits. `POST {base_url}/images/edits`
//! with a bearer key and a multipart form (`image` as PNG, `prompt`,
//! `model`, and the optional `size`, `quality`, `input_fidelity`,
//! `output_format` when configured); the answer is synchronous,
//! `{"data": [{"b64_json"}]}` or, from some compatible servers,
//! `{"data": [{"url"}]}`, which is downloaded at once. The readiness probe
//! is `GET {base_url}/models/{model}` (free).

use async_trait::async_trait;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditRequest, Editor, EditorError, Image};
use reqwest::header::AUTHORIZATION;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    body_excerpt, classify_failure, decode_base64_image, endpoint, model_name, parse_json,
    provider_message, source_png, Credential, HttpCaller,
};

/// Client of the OpenAI image edits endpoint (or a compatible server).
#[derive(Debug)]
pub struct OpenAiEditor {
    endpoint: Url,
    /// `{base_url}/models/{model}`: the free call of the readiness probe.
    probe_url: Url,
    model: String,
    /// The optional form fields that are configured, in a fixed order.
    extras: Vec<(&'static str, String)>,
    credential: Credential,
    caller: HttpCaller,
}

impl OpenAiEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        let model = model_name(name, profile)?;
        let mut extras = Vec::new();
        for (field, value) in [
            ("size", &profile.size),
            ("quality", &profile.quality),
            ("input_fidelity", &profile.input_fidelity),
            ("output_format", &profile.output_format),
        ] {
            if let Some(value) = value {
                let value = value.trim();
                if value.is_empty() {
                    return Err(EditorConfigError::invalid(
                        name,
                        field,
                        "must not be empty (leave it out for the provider's default)",
                    ));
                }
                extras.push((field, value.to_owned()));
            }
        }
        Ok(Self {
            endpoint: endpoint(name, profile, "/images/edits")?,
            probe_url: endpoint(name, profile, &format!("/models/{model}"))?,
            model,
            extras,
            credential: Credential::required(name, profile, AUTHORIZATION, "Bearer ")?,
            caller: HttpCaller::from_profile(name, profile)?.with_classifier(classify),
        })
    }

    /// The `/images/edits` URL requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The URL the readiness probe GETs (`Editor::probe`).
    pub fn probe_url(&self) -> &Url {
        &self.probe_url
    }

    /// The model sent with each request.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// One attempt's form; rebuilt per attempt because a sent form is gone.
    fn form(&self, png: &Image, prompt: &str) -> Result<Form, EditorError> {
        let image = Part::stream(reqwest::Body::from(png.bytes.clone()))
            .file_name("image.png")
            .mime_str("image/png")
            .map_err(|e| EditorError::Invalid(format!("could not build the form: {e}")))?;
        let mut form = Form::new()
            .part("image", image)
            .text("prompt", prompt.to_owned())
            .text("model", self.model.clone());
        for (field, value) in &self.extras {
            form = form.text(*field, value.clone());
        }
        Ok(form)
    }
}

#[async_trait]
impl Editor for OpenAiEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.caller
            .run_edit(Some(&self.model), request.turn, async {
                // The source size is kept: the API picks its output size itself.
                let png = source_png(request.source, 1).await?;
                let reply = self
                    .caller
                    .send(|_| {
                        Ok(self
                            .caller
                            .client()
                            .post(self.endpoint.clone())
                            .header(self.credential.name(), self.credential.value().clone())
                            .multipart(self.form(&png, request.instruction)?))
                    })
                    .await?;
                // Parsing megabytes of base64 and decoding the image are CPU
                // work: off the async threads.
                let delivered =
                    off_thread(
                        move || match result(&parse_json(&reply.body)?, &reply.body)? {
                            Delivered::Base64(b64) => decode_base64_image(&b64, "b64_json").map(Ok),
                            Delivered::Url(url) => Ok(Err(url)),
                        },
                    )
                    .await?;
                match delivered {
                    Ok(image) => Ok(image),
                    Err(url) => self.caller.download(&url).await,
                }
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

/// Where the answer holds the image.
enum Delivered {
    Base64(String),
    Url(String),
}

/// `data[0].b64_json` or `data[0].url`; an `error` object in a 2xx answer
/// is classified like a failed one.
fn result(json: &Value, body: &[u8]) -> Result<Delivered, EditorError> {
    let first = json.pointer("/data/0");
    let field = |k: &str| first.and_then(|d| d.get(k)).and_then(Value::as_str);
    if let Some(b64) = field("b64_json") {
        return Ok(Delivered::Base64(b64.to_owned()));
    }
    if let Some(url) = field("url") {
        return Ok(Delivered::Url(url.to_owned()));
    }
    if json.get("error").is_some() {
        return Err(classify(StatusCode::BAD_REQUEST, body));
    }
    Err(EditorError::Invalid(format!(
        "the editor's answer has no data[0].b64_json or data[0].url: {}",
        body_excerpt(body)
    )))
}

/// OpenAI's failures: moderation codes are refusals (by
/// [`classify_failure`]); a 429 `insufficient_quota` is not passing — the
/// account needs an operator — so it is `Auth`, not retried.
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        ["/error/code", "/error/type"]
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_str).map(str::to_owned))
    });
    if code.as_deref() == Some("insufficient_quota") {
        return EditorError::Auth(format!(
            "HTTP {status}: the account has no quota left: {}",
            provider_message(body)
        ));
    }
    classify_failure(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EditorKind;

    #[test]
    fn quota_exhaustion_is_not_retried() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, body),
            EditorError::Auth(m) if m.contains("exceeded your current quota")
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"{}"),
            EditorError::Transient(_)
        ));
    }

    #[test]
    fn the_endpoint_appends_to_the_base_path() {
        std::env::set_var("OPENAI_UNIT_KEY", "k");
        let mut p = EditorProfile::new(EditorKind::Openai);
        p.api_key_env = Some("OPENAI_UNIT_KEY".into());
        let e = OpenAiEditor::from_profile("o", &p).unwrap();
        assert_eq!(
            e.endpoint().as_str(),
            "https://api.openai.com/v1/images/edits"
        );
        assert_eq!(e.model(), "gpt-image-1");
        p.base_url = Some("http://proxy:8080/openai/v1/".into());
        let e = OpenAiEditor::from_profile("o", &p).unwrap();
        assert_eq!(
            e.endpoint().as_str(),
            "http://proxy:8080/openai/v1/images/edits"
        );
    }
}
