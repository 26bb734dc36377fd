//! The `http` kind: self-hosted servers speaking the reference `/edit`
//! protocol (`POST {url}/edit` with `{"image", "prompt", ...params}` →
//! `{"edited_image"}`), round-robin over one or more URLs. A request's own
//! seed (a turn's candidates each have one) is sent as `seed`, replacing
//! any `seed` in `params`.
//!
//! A self-hosted server costs nothing per call, so by default
//! (`retry_ambiguous`) a call that timed out or broke off after it was sent
//! is sent again, to the next URL of the pool; set `retry_ambiguous =
//! false` for a server whose edits must not run twice.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditRequest, Editor, EditorError, Image};
use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    body_excerpt, candidate_seed, decode_base64_image, is_refusal, read_api_key, HttpCaller,
};

pub use crate::http_common::MAX_OUTPUT_PIXELS;

/// Body fields the client sets itself; `params` may not override them.
const RESERVED_FIELDS: [&str; 2] = ["image", "prompt"];

/// Client of a self-hosted `/edit` server (or a pool of them).
#[derive(Debug)]
pub struct HttpEditor {
    /// `{url}/edit` for each configured URL.
    endpoints: Vec<Url>,
    /// Round-robin position: each call starts at the next endpoint.
    next: AtomicUsize,
    params: Map<String, Value>,
    multiple_of: u32,
    api_key: Option<String>,
    caller: HttpCaller,
}

impl HttpEditor {
    /// Builds the client for profile `name`, validating its settings.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        let endpoints = endpoints(name, profile)?;
        if profile.multiple_of == 0 {
            return Err(EditorConfigError::invalid(
                name,
                "multiple_of",
                "must be at least 1 (1 disables resizing)",
            ));
        }
        if let Some(field) = RESERVED_FIELDS
            .iter()
            .find(|f| profile.params.contains_key(**f))
        {
            return Err(EditorConfigError::invalid(
                name,
                "params",
                format!("`{field}` is set by the service and cannot be a parameter"),
            ));
        }
        Ok(Self {
            endpoints,
            next: AtomicUsize::new(0),
            params: profile.params.clone(),
            multiple_of: profile.multiple_of,
            api_key: read_api_key(name, profile)?,
            caller: HttpCaller::from_profile(name, profile)?,
        })
    }

    /// The `/edit` endpoints, in round-robin order.
    pub fn endpoints(&self) -> &[Url] {
        &self.endpoints
    }

    /// The JSON body: the source as PNG resized to multiples of
    /// `multiple_of`, the prompt and the profile's params, whose `seed` the
    /// request's own replaces when it has one. CPU work, so it runs off
    /// the async threads.
    async fn request_body(
        &self,
        source: Image,
        prompt: &str,
        seed: Option<i64>,
    ) -> Result<Bytes, EditorError> {
        let mut body = self.params.clone();
        if let Some(seed) = seed {
            body.insert("seed".into(), Value::from(seed));
        }
        body.insert("prompt".into(), Value::String(prompt.to_owned()));
        let multiple = self.multiple_of;
        off_thread(move || {
            let png = source.to_png_multiple_of(multiple).map_err(|e| {
                EditorError::Invalid(format!("the source image cannot be prepared: {e}"))
            })?;
            body.insert("image".into(), Value::String(STANDARD.encode(&png.bytes)));
            let json = serde_json::to_vec(&body).expect("a JSON map always serialises");
            Ok(Bytes::from(json))
        })
        .await
    }
}

#[async_trait]
impl Editor for HttpEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.caller
            .run_edit(None, request.turn, async {
                let body = self
                    .request_body(
                        request.source.clone(),
                        request.instruction,
                        candidate_seed(&request),
                    )
                    .await?;
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let reply = self
                    .caller
                    .send(|attempt| {
                        // A server that did not answer is skipped: the next
                        // attempt goes to the next URL of the pool.
                        let i =
                            (start + attempt.connection_failures as usize) % self.endpoints.len();
                        let mut builder = self
                            .caller
                            .client()
                            .post(self.endpoints[i].clone())
                            .header(CONTENT_TYPE, "application/json")
                            .body(body.clone());
                        if let Some(key) = &self.api_key {
                            builder = builder.bearer_auth(key);
                        }
                        Ok(builder)
                    })
                    .await?;
                off_thread(move || decode_answer(&reply.body)).await
            })
            .await
    }

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }
}

fn endpoints(name: &str, profile: &EditorProfile) -> Result<Vec<Url>, EditorConfigError> {
    let given: Vec<(String, &str)> = match (&profile.url, &profile.urls) {
        (Some(_), Some(_)) => {
            return Err(EditorConfigError::invalid(
                name,
                "url",
                "set either url or urls, not both",
            ))
        }
        (None, None) => {
            return Err(EditorConfigError::invalid(
                name,
                "url",
                "missing: the http kind needs url (or urls)",
            ))
        }
        (Some(u), None) => vec![("url".to_owned(), u.as_str())],
        (None, Some(us)) if us.is_empty() => {
            return Err(EditorConfigError::invalid(
                name,
                "urls",
                "must not be empty",
            ))
        }
        (None, Some(us)) => us
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("urls[{i}]"), u.as_str()))
            .collect(),
    };
    given
        .into_iter()
        .map(|(field, raw)| {
            let bad = |m: String| EditorConfigError::invalid(name, &field, m);
            let mut url = Url::parse(raw.trim()).map_err(|e| bad(format!("{raw:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(bad(format!("{raw:?}: must be an http:// or https:// URL")));
            }
            let path = format!("{}/edit", url.path().trim_end_matches('/'));
            url.set_path(&path);
            Ok(url)
        })
        .collect()
}

/// `{"edited_image": "<base64 PNG>"}` (optionally a `data:` URL) → a
/// validated image. Anything else is `Invalid`, or `Refused` when the body
/// carries a moderation/safety code.
fn decode_answer(body: &[u8]) -> Result<Image, EditorError> {
    let invalid = |what: &str| {
        EditorError::Invalid(format!(
            "the editor's answer {what}: {}",
            body_excerpt(body)
        ))
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| invalid("is not JSON"))?;
    let Some(encoded) = json.get("edited_image").and_then(Value::as_str) else {
        if is_refusal(body) {
            return Err(EditorError::Refused(body_excerpt(body)));
        }
        return Err(invalid("has no edited_image string"));
    };
    decode_base64_image(encoded, "edited_image")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EditorKind;

    fn profile(url: &str) -> EditorProfile {
        EditorProfile {
            url: Some(url.to_owned()),
            ..EditorProfile::new(EditorKind::Http)
        }
    }

    #[test]
    fn endpoint_joins_edit_to_the_base_path() {
        for (base, want) in [
            ("http://h:1", "http://h:1/edit"),
            ("http://h:1/", "http://h:1/edit"),
            ("https://h/gpu0/", "https://h/gpu0/edit"),
        ] {
            let e = HttpEditor::from_profile("x", &profile(base)).unwrap();
            assert_eq!(e.endpoints()[0].as_str(), want);
        }
    }

    #[test]
    fn params_cannot_override_the_prompt() {
        let mut p = profile("http://h");
        p.params.insert("prompt".into(), Value::from("x"));
        let err = HttpEditor::from_profile("k", &p).unwrap_err();
        assert!(err.to_string().starts_with("editors.k.params:"), "{err}");
    }

    #[test]
    fn answers_that_are_not_images() {
        assert!(matches!(
            decode_answer(b"<html>"),
            Err(EditorError::Invalid(_))
        ));
        assert!(matches!(decode_answer(b"{}"), Err(EditorError::Invalid(_))));
        assert!(matches!(
            decode_answer(br#"{"error": {"code": "content_moderated"}}"#),
            Err(EditorError::Refused(_))
        ));
        assert!(matches!(
            decode_answer(br#"{"edited_image": "data:image/png,abc"}"#),
            Err(EditorError::Invalid(_))
        ));
    }
}
