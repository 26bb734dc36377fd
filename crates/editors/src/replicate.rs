//! The `replicate` kind: Replicate predictions of an official model. `POST
//! {base_url}/models/{owner}/{name}/predictions` with a bearer key and
//! `{"input": {"prompt", "input_image", ...}}`; the prediction's `urls.get`
//! is polled while `starting`/`processing` until `succeeded` (`output`: a
//! URL, or a list of them, deleted after an hour: downloaded at once),
//! `failed` or `canceled`.
//!
//! No `Prefer: wait`: the create call returns at once so the prediction is
//! recorded (checkpoint) before any waiting, as for the other asynchronous
//! kinds. The create call is paid and Replicate documents no idempotency
//! key for it, so an ambiguous failure of it is not resent (see
//! `http_common`); polls and downloads are GETs and are retried. `POST
//! urls.cancel` stops a prediction the job no longer wants. The readiness
//! probe is `GET {base_url}/models/{owner}/{name}` (free).

use std::io::Cursor;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditRequest, Editor, EditorError, Image, ProviderRequest};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    check_output_format, check_seed, classify_failure, endpoint, model_name, provider_message,
    source_png, Credential, HttpCaller,
};
use crate::polling::{
    edit_async, failure_text, handle_url, required_str, required_url, url_at, AsyncProvider, Poll,
    Waiting,
};

/// Largest `data:` URL sent as the input image: Replicate takes data URLs
/// up to about 256 KB; larger files would need its upload API.
pub const MAX_DATA_URL_BYTES: usize = 256_000;

/// Input fields the client sets itself; `input` may not override them.
const OWN_INPUTS: [&str; 2] = ["prompt", "input_image"];

/// Words in a failed prediction's error that mean a safety refusal.
/// Unconfirmed list: Replicate has no error code for it; its BFL models
/// fail with "flagged as sensitive (E005)", older ones with "NSFW content
/// detected".
const REFUSAL_WORDS: [&str; 6] = [
    "nsfw",
    "sensitive",
    "safety",
    "moderat",
    "content polic",
    "e005",
];

/// Client of one Replicate model's predictions.
#[derive(Debug)]
pub struct ReplicateEditor {
    endpoint: Url,
    /// `{base_url}/models/{owner}/{name}`: the free call of the readiness
    /// probe.
    probe_url: Url,
    model: String,
    /// The configured input fields (seed, output format, `input`).
    input: Map<String, Value>,
    credential: Credential,
    caller: HttpCaller,
    waiting: Waiting,
}

impl ReplicateEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        check_seed(name, profile)?;
        let mut input = Map::new();
        if let Some(seed) = profile.seed {
            input.insert("seed".into(), Value::from(seed));
        }
        // Replicate's FLUX models spell JPEG `jpg`.
        if let Some(format) = check_output_format(name, profile)? {
            let format = if format == "jpeg" { "jpg" } else { format };
            input.insert("output_format".into(), Value::from(format));
        }
        for (key, value) in &profile.input {
            if OWN_INPUTS.contains(&key.as_str()) || input.contains_key(key) {
                return Err(EditorConfigError::invalid(
                    name,
                    "input",
                    format!("{key:?} is set by the client or by another setting"),
                ));
            }
            input.insert(key.clone(), value.clone());
        }
        let model = model_name(name, profile)?;
        let caller = HttpCaller::from_profile(name, profile)?.with_classifier(classify);
        Ok(Self {
            endpoint: endpoint(name, profile, &format!("/models/{model}/predictions"))?,
            probe_url: endpoint(name, profile, &format!("/models/{model}"))?,
            model,
            input,
            credential: Credential::required(name, profile, AUTHORIZATION, "Bearer ")?,
            waiting: Waiting::from_profile(name, profile)?,
            caller,
        })
    }

    /// The prediction creation URL.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The URL the readiness probe GETs (`Editor::probe`).
    pub fn probe_url(&self) -> &Url {
        &self.probe_url
    }
}

#[async_trait]
impl AsyncProvider for ReplicateEditor {
    async fn submit(
        &self,
        source: &Image,
        instruction: &str,
        seed: Option<i64>,
    ) -> Result<ProviderRequest, EditorError> {
        let png = source_png(source, 1).await?;
        let image = off_thread(move || small_data_url(&png, MAX_DATA_URL_BYTES)).await?;
        let mut input = self.input.clone();
        // The request's seed replaces the profile's (`seed`, or a `seed`
        // given in `input`).
        if let Some(seed) = seed {
            input.insert("seed".into(), Value::from(seed));
        }
        input.insert("prompt".into(), Value::from(instruction));
        input.insert("input_image".into(), Value::from(image));
        let answer = self
            .caller
            .post_json(&self.endpoint, &self.credential, json!({ "input": input }))
            .await?;
        let id = required_str(&answer, "/id")?;
        required_url(&answer, "/urls/get")?;
        Ok(ProviderRequest {
            id: id.to_owned(),
            data: json!({ "urls": answer["urls"].clone() }),
        })
    }

    async fn poll(&self, handle: &ProviderRequest) -> Result<Poll, EditorError> {
        let url = match handle_url(handle, "/urls/get") {
            Ok(url) => url,
            Err(gone) => return Ok(gone),
        };
        let Some(prediction) = self.caller.get_json(&url, &self.credential).await? else {
            return Ok(Poll::Gone(format!("prediction {} answered 404", handle.id)));
        };
        prediction_state(&prediction)
    }
}

#[async_trait]
impl Editor for ReplicateEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        edit_async(self, &self.caller, &self.model, self.waiting, request).await
    }

    /// `POST` to the prediction's stored `urls.cancel`. A handle without
    /// one has nothing to call: success.
    async fn cancel(&self, request: &ProviderRequest) -> Result<(), EditorError> {
        let Some(url) = url_at(&request.data, "/urls/cancel") else {
            tracing::info!(request_id = %request.id, "no urls.cancel stored; nothing to cancel");
            return Ok(());
        };
        self.caller
            .cancel(Method::POST, &url, &self.credential, &request.id)
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

/// The state of a prediction.
fn prediction_state(prediction: &Value) -> Result<Poll, EditorError> {
    let status = required_str(prediction, "/status")?;
    match status {
        "succeeded" => {
            let output = match prediction.get("output") {
                Some(Value::Array(items)) => items.iter().find_map(Value::as_str),
                Some(Value::String(url)) => Some(url.as_str()),
                _ => None,
            };
            // Outputs are deleted an hour after the prediction: a resumed
            // prediction may have none left.
            Ok(output.map_or_else(
                || Poll::Gone("the prediction succeeded but its output is gone".into()),
                |url| Poll::Ready(url.to_owned()),
            ))
        }
        "failed" => Err(failed(&failure_text(prediction, &["error"]))),
        // Canceled by someone (dashboard, another client) or aborted by
        // Replicate's deadline: retrying the same request cannot help.
        "canceled" | "aborted" => Err(EditorError::Invalid(format!(
            "the prediction was {status}: {}",
            failure_text(prediction, &["error"])
        ))),
        // `starting`, `processing`, and anything added later.
        other => Ok(Poll::Pending(other.to_owned())),
    }
}

/// A failed prediction's class: safety words → `Refused`; an interrupted
/// run (Replicate's own fault, code `PA`, "please retry") → `Transient`;
/// anything else → `Invalid`.
fn failed(error: &str) -> EditorError {
    let lower = error.to_ascii_lowercase();
    if REFUSAL_WORDS.iter().any(|w| lower.contains(w)) {
        EditorError::Refused(error.to_owned())
    } else if lower.contains("interrupted") || lower.contains("(code: pa)") {
        EditorError::Transient(format!("the prediction was interrupted: {error}"))
    } else {
        EditorError::Invalid(format!("the prediction failed: {error}"))
    }
}

/// Replicate's failed answers: 402 (insufficient credit) needs an operator
/// like a bad key; the rest as usual.
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    if status == StatusCode::PAYMENT_REQUIRED {
        EditorError::Auth(format!("HTTP {status}: {}", provider_message(body)))
    } else {
        classify_failure(status, body)
    }
}

/// `png` as a `data:` URL of at most `limit` bytes: the PNG itself when it
/// fits, else a JPEG (quality 90, then 75) scaled down by 3/4 steps until
/// it fits. The model sees a smaller or lossy source; Kontext picks its
/// output size from the aspect ratio, which the scaling keeps.
fn small_data_url(png: &Image, limit: usize) -> Result<String, EditorError> {
    let data_url =
        |mime: &str, bytes: &[u8]| format!("data:{mime};base64,{}", STANDARD.encode(bytes));
    let as_png = data_url("image/png", &png.bytes);
    if as_png.len() <= limit {
        return Ok(as_png);
    }
    let invalid =
        |e: String| EditorError::Invalid(format!("the source image cannot be prepared: {e}"));
    let mut pixels = png.decode().map_err(|e| invalid(e.to_string()))?.to_rgb8();
    loop {
        for quality in [90, 75] {
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), quality)
                .encode_image(&pixels)
                .map_err(|e| invalid(e.to_string()))?;
            let url = data_url("image/jpeg", &jpeg);
            if url.len() <= limit {
                return Ok(url);
            }
        }
        let (w, h) = pixels.dimensions();
        if w.min(h) <= 64 {
            return Err(invalid(format!(
                "it does not fit in a {limit}-byte data URL even at {w}x{h}"
            )));
        }
        pixels = image::imageops::resize(&pixels, w * 3 / 4, h * 3 / 4, FilterType::Triangle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, Rgb, RgbImage};

    #[test]
    fn prediction_states() {
        let s = |v: Value| prediction_state(&v);
        assert_eq!(
            s(json!({"status": "starting"})).unwrap(),
            Poll::Pending("starting".into())
        );
        assert_eq!(
            s(json!({"status": "succeeded", "output": "https://r/o.png"})).unwrap(),
            Poll::Ready("https://r/o.png".into())
        );
        assert_eq!(
            s(json!({"status": "succeeded", "output": ["https://r/a.png", "https://r/b.png"]}))
                .unwrap(),
            Poll::Ready("https://r/a.png".into())
        );
        assert!(matches!(
            s(json!({"status": "succeeded", "output": null})),
            Ok(Poll::Gone(_))
        ));
        assert!(matches!(
            s(json!({"status": "failed", "error": "Prediction failed: the input or output was flagged as sensitive (E005)"})),
            Err(EditorError::Refused(m)) if m.contains("E005")
        ));
        assert!(matches!(
            s(
                json!({"status": "failed", "error": "NSFW content detected. Try a different prompt."})
            ),
            Err(EditorError::Refused(_))
        ));
        assert!(matches!(
            s(
                json!({"status": "failed", "error": "Prediction interrupted; please retry (code: PA)"})
            ),
            Err(EditorError::Transient(_))
        ));
        assert!(matches!(
            s(json!({"status": "failed", "error": "CUDA out of memory"})),
            Err(EditorError::Invalid(_))
        ));
        assert!(matches!(
            s(json!({"status": "canceled"})),
            Err(EditorError::Invalid(_))
        ));
    }

    #[test]
    fn payment_required_is_auth() {
        assert!(matches!(
            classify(
                StatusCode::PAYMENT_REQUIRED,
                br#"{"detail": "You have insufficient credit"}"#
            ),
            EditorError::Auth(_)
        ));
    }

    #[test]
    fn large_sources_become_small_jpegs() {
        let noisy = Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_fn(
            600,
            400,
            |x, y| {
                let v =
                    (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)).wrapping_mul(2_654_435_761);
                Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
            },
        )));
        assert!(noisy.bytes.len() > MAX_DATA_URL_BYTES);
        let url = small_data_url(&noisy, MAX_DATA_URL_BYTES).unwrap();
        assert!(url.len() <= MAX_DATA_URL_BYTES);
        let payload = url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = Image::validate(STANDARD.decode(payload).unwrap().into(), 1 << 30).unwrap();
        let ratio = f64::from(jpeg.width) / f64::from(jpeg.height);
        assert!((ratio - 1.5).abs() < 0.02, "{}x{}", jpeg.width, jpeg.height);

        let small = Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::new(32, 32)));
        assert!(small_data_url(&small, MAX_DATA_URL_BYTES)
            .unwrap()
            .starts_with("data:image/png;base64,"));
        assert!(small_data_url(&noisy, 100).is_err());
    }
}
