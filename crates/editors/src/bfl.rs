//! The `bfl` kind: Black Forest Labs' FLUX API. `POST {base_url}/v1/{model}`
//! (e.g. `flux-kontext-pro`) with the key in `x-key` and the source as
//! base64 PNG in `input_image`; the answer is `{"id", "polling_url"}`. The
//! polling URL (a regional host: used as given) answers `status` `Pending`
//! until `Ready` with `result.sample`, a signed URL that expires after 10
//! minutes and is downloaded at once.

use async_trait::async_trait;
use editthinker_core::{EditRequest, Editor, EditorError, Image, ProviderRequest};
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{
    check_output_format, check_safety_tolerance, check_seed, classify_failure, endpoint,
    model_name, provider_message, source_png_base64, Credential, HttpCaller,
};
use crate::polling::{
    edit_async, failure_text, handle_url, required_str, required_url, AsyncProvider, Poll, Waiting,
};

/// The widest and the tallest aspect ratio BFL accepts (21:9 and 9:21).
const MAX_RATIO: (u32, u32) = (21, 9);

/// Client of one BFL endpoint (model).
#[derive(Debug)]
pub struct BflEditor {
    endpoint: Url,
    model: String,
    seed: Option<i64>,
    aspect_ratio: Option<String>,
    output_format: Option<&'static str>,
    safety_tolerance: Option<i64>,
    prompt_upsampling: Option<bool>,
    credential: Credential,
    caller: HttpCaller,
    waiting: Waiting,
}

impl BflEditor {
    /// Builds the client for profile `name`, validating its settings; the
    /// key (`api_key_env`) is required.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        check_seed(name, profile)?;
        let aspect_ratio = match &profile.aspect_ratio {
            Some(given) => Some(parse_aspect_ratio(given.trim()).ok_or_else(|| {
                EditorConfigError::invalid(
                    name,
                    "aspect_ratio",
                    format!("{given:?}: must be W:H between 21:9 and 9:21, e.g. \"4:3\""),
                )
            })?),
            None => None,
        };
        let model = model_name(name, profile)?;
        let caller = HttpCaller::from_profile(name, profile)?.with_classifier(classify);
        Ok(Self {
            endpoint: endpoint(name, profile, &format!("/v1/{model}"))?,
            model,
            seed: profile.seed,
            aspect_ratio,
            output_format: check_output_format(name, profile)?,
            // BFL documents 0 (strict) to 6; with an input image it may cap
            // lower (2 on some models) and says so in a 422.
            safety_tolerance: check_safety_tolerance(name, profile, 0..=6)?,
            prompt_upsampling: profile.prompt_upsampling,
            credential: Credential::required(name, profile, HeaderName::from_static("x-key"), "")?,
            waiting: Waiting::from_profile(name, profile)?,
            caller,
        })
    }

    /// The submission URL.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The request body: the source as base64 PNG, the prompt and the
    /// configured options, with the request's `seed` in place of the
    /// profile's when it has one.
    async fn body(
        &self,
        source: &Image,
        prompt: &str,
        seed: Option<i64>,
    ) -> Result<Value, EditorError> {
        let (encoded, width, height) = source_png_base64(source, false).await?;
        let mut body = json!({ "prompt": prompt, "input_image": encoded });
        // FLUX.2 endpoints size the output from width/height (default: the
        // input's), not from an aspect ratio, so one is only derived for
        // the Kontext family.
        let aspect_ratio = match &self.aspect_ratio {
            Some(given) => Some(given.clone()),
            None if !self.model.starts_with("flux-2") => Some(source_aspect_ratio(width, height)),
            None => None,
        };
        let options = [
            ("seed", seed.or(self.seed).map(Value::from)),
            ("aspect_ratio", aspect_ratio.map(Value::from)),
            ("output_format", self.output_format.map(Value::from)),
            ("safety_tolerance", self.safety_tolerance.map(Value::from)),
            ("prompt_upsampling", self.prompt_upsampling.map(Value::from)),
        ];
        for (key, value) in options {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        Ok(body)
    }
}

#[async_trait]
impl AsyncProvider for BflEditor {
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
        let id = required_str(&answer, "/id")?;
        let polling_url = required_url(&answer, "/polling_url")?;
        Ok(ProviderRequest {
            id: id.to_owned(),
            data: json!({ "polling_url": polling_url.as_str() }),
        })
    }

    async fn poll(&self, handle: &ProviderRequest) -> Result<Poll, EditorError> {
        let url = match handle_url(handle, "/polling_url") {
            Ok(url) => url,
            Err(gone) => return Ok(gone),
        };
        // The polling host is BFL's own (regional): it wants the key too.
        let Some(answer) = self.caller.get_json(&url, &self.credential).await? else {
            return Ok(Poll::Gone(format!("polling {} answered 404", handle.id)));
        };
        poll_state(&answer)
    }
}

/// The state a polling answer reports.
fn poll_state(answer: &Value) -> Result<Poll, EditorError> {
    let status = required_str(answer, "/status")?;
    let details = || failure_text(answer, &["details", "result", "error"]);
    match status {
        "Ready" => Ok(Poll::Ready(
            required_str(answer, "/result/sample")?.to_owned(),
        )),
        "Request Moderated" | "Content Moderated" => {
            Err(EditorError::Refused(format!("{status}: {}", details())))
        }
        "Task not found" => Ok(Poll::Gone(status.to_owned())),
        "Error" | "Failed" => Err(EditorError::Invalid(format!(
            "the generation failed ({status}): {}",
            details()
        ))),
        // `Pending`, and any status added later: keep waiting, bounded by
        // the wait limit.
        other => Ok(Poll::Pending(other.to_owned())),
    }
}

#[async_trait]
impl Editor for BflEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        edit_async(self, &self.caller, &self.model, self.waiting, request).await
    }

    // No `cancel`: BFL's API has no call to stop a task (the default does
    // nothing); an abandoned task runs to its end on BFL's side.

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }
}

/// BFL's failed answers: 402 (out of credits) needs an operator like a bad
/// key; the rest as usual (429 "too many active tasks" is retried).
fn classify(status: StatusCode, body: &[u8]) -> EditorError {
    if status == StatusCode::PAYMENT_REQUIRED {
        EditorError::Auth(format!(
            "HTTP {status} (out of credits): {}",
            provider_message(body)
        ))
    } else {
        classify_failure(status, body)
    }
}

/// Parses `W:H` with both terms positive and the ratio within 21:9..9:21.
fn parse_aspect_ratio(given: &str) -> Option<String> {
    let (w, h) = given.split_once(':')?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    let (max_w, max_h) = MAX_RATIO;
    let in_range = w > 0
        && h > 0
        && u64::from(w) * u64::from(max_h) <= u64::from(h) * u64::from(max_w)
        && u64::from(h) * u64::from(max_h) <= u64::from(w) * u64::from(max_w);
    in_range.then(|| format!("{w}:{h}"))
}

/// The source's aspect ratio as BFL takes it: clamped to 21:9..9:21, then
/// the closest `W:H` with terms up to 21 (BFL's own ratios are small, like
/// 16:9 or 3:2; Kontext picks its output size, about 1 megapixel, from it).
fn source_aspect_ratio(width: u32, height: u32) -> String {
    let (max_w, max_h) = MAX_RATIO;
    let ratio = (f64::from(width) / f64::from(height.max(1))).clamp(
        f64::from(max_h) / f64::from(max_w),
        f64::from(max_w) / f64::from(max_h),
    );
    let mut best = (1u32, 1u32);
    let mut best_error = f64::INFINITY;
    for h in 1..=max_w {
        for w in 1..=max_w {
            let error = (f64::from(w) / f64::from(h) - ratio).abs();
            // Strictly better only: the first hit has the smallest terms.
            if error < best_error - 1e-12 {
                (best, best_error) = ((w, h), error);
            }
        }
    }
    format!("{}:{}", best.0, best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_ratios_from_the_source() {
        for ((w, h), want) in [
            ((1024, 1024), "1:1"),
            ((1920, 1080), "16:9"),
            ((1080, 1920), "9:16"),
            ((1200, 800), "3:2"),
            ((800, 600), "4:3"),
            ((1000, 370), "7:3"),
            ((4000, 1000), "7:3"),
            ((10, 1000), "3:7"),
            ((1000, 997), "1:1"),
        ] {
            assert_eq!(source_aspect_ratio(w, h), want, "{w}x{h}");
            assert!(parse_aspect_ratio(want).is_some(), "{want} is accepted");
        }
    }

    #[test]
    fn configured_aspect_ratios() {
        assert_eq!(parse_aspect_ratio("4:3").as_deref(), Some("4:3"));
        assert_eq!(parse_aspect_ratio("21:9").as_deref(), Some("21:9"));
        assert_eq!(parse_aspect_ratio("9:21").as_deref(), Some("9:21"));
        for bad in ["22:9", "9:22", "0:1", "1:0", "4/3", "a:b", "", "16:9:1"] {
            assert_eq!(parse_aspect_ratio(bad), None, "{bad}");
        }
    }

    #[test]
    fn poll_states() {
        let s = |v: Value| poll_state(&v);
        assert_eq!(
            s(json!({"id": "a", "status": "Pending", "progress": 0.3})).unwrap(),
            Poll::Pending("Pending".into())
        );
        assert_eq!(
            s(json!({"status": "Ready", "result": {"sample": "https://r/x.png"}})).unwrap(),
            Poll::Ready("https://r/x.png".into())
        );
        assert!(matches!(
            s(json!({"status": "Task not found"})),
            Ok(Poll::Gone(_))
        ));
        assert!(matches!(
            s(json!({"status": "Content Moderated", "details": {"Moderation Reasons": ["x"]}})),
            Err(EditorError::Refused(m)) if m.contains("Moderation Reasons")
        ));
        assert!(matches!(
            s(json!({"status": "Error"})),
            Err(EditorError::Invalid(_))
        ));
        assert!(matches!(
            s(json!({"status": "Ready"})),
            Err(EditorError::Invalid(_))
        ));
        assert!(matches!(s(json!({})), Err(EditorError::Invalid(_))));
    }

    #[test]
    fn out_of_credits_is_auth() {
        assert!(matches!(
            classify(
                StatusCode::PAYMENT_REQUIRED,
                br#"{"detail": "Insufficient credits"}"#
            ),
            EditorError::Auth(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"{}"),
            EditorError::Transient(_)
        ));
    }
}
