//! What the hosted kinds read from their profile: the API key as a header,
//! the endpoint under `base_url`, the model id, and the options each
//! provider bounds (`seed`, `output_format`, `safety_tolerance`), and the
//! seed one request asks for in place of the profile's.

use std::fmt;

use editthinker_core::EditRequest;
use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use crate::config::{EditorConfigError, EditorKind, EditorProfile};

/// An API key as the header a provider expects. The value is marked
/// sensitive and never printed.
#[derive(Clone)]
pub struct Credential {
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}: <redacted>)", self.name)
    }
}

impl Credential {
    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The header value (sensitive).
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// Reads the key a hosted kind requires from the variable named by
    /// `api_key_env` and sends it as `header: {prefix}{key}` (e.g.
    /// `authorization: Bearer <key>`). A missing `api_key_env`, an unset
    /// variable or a key that cannot be a header value is a configuration
    /// error naming `editors.<name>.api_key_env`.
    pub fn required(
        name: &str,
        profile: &EditorProfile,
        header: HeaderName,
        prefix: &str,
    ) -> Result<Self, EditorConfigError> {
        let key = read_api_key(name, profile)?.ok_or_else(|| {
            EditorConfigError::invalid(
                name,
                "api_key_env",
                format!(
                    "missing: the {} kind needs an API key; name the environment variable that holds it",
                    profile.kind
                ),
            )
        })?;
        let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
            EditorConfigError::invalid(
                name,
                "api_key_env",
                "the key holds characters an HTTP header cannot carry",
            )
        })?;
        value.set_sensitive(true);
        Ok(Self {
            name: header,
            value,
        })
    }
}

/// The endpoint of a hosted kind: `base_url` (or the kind's default) with
/// `path` appended to its path. A bad `base_url` is an error naming
/// `editors.<name>.base_url`.
pub fn endpoint(name: &str, profile: &EditorProfile, path: &str) -> Result<Url, EditorConfigError> {
    let raw = match (&profile.base_url, profile.kind.default_base_url()) {
        (Some(given), _) => given.trim(),
        (None, Some(default)) => default,
        (None, None) => {
            return Err(EditorConfigError::invalid(
                name,
                "base_url",
                format!("missing: the {} kind has no default", profile.kind),
            ))
        }
    };
    let bad = |m: String| EditorConfigError::invalid(name, "base_url", m);
    let mut url = Url::parse(raw).map_err(|e| bad(format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad(format!("{raw:?}: must be an http:// or https:// URL")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!("{raw:?}: must not have a query or fragment")));
    }
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

/// The profile's model (or the kind's default) as a URL-safe name: letters,
/// digits, `.`, `_`, `-`, in as many `/`-separated segments as the kind's
/// ids have ([`EditorKind::model_segments`]), none of them empty, `.` or
/// `..` (the id becomes part of a URL path). An error names
/// `editors.<name>.model`.
pub fn model_name(name: &str, profile: &EditorProfile) -> Result<String, EditorConfigError> {
    let model = profile.effective_model().unwrap_or_default();
    let model = model.trim();
    if model.is_empty() {
        return Err(EditorConfigError::invalid(
            name,
            "model",
            "must not be empty",
        ));
    }
    let segments = profile.kind.model_segments();
    let slash = *segments.end() > 1;
    if !model
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/'))
    {
        let allowed = if slash { ", '-' and '/'" } else { " and '-'" };
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: only letters, digits, '.', '_'{allowed} are allowed"),
        ));
    }
    let parts: Vec<&str> = model.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: empty, '.' or '..' segments are not allowed"),
        ));
    }
    if !segments.contains(&parts.len()) {
        let shape = match profile.kind {
            EditorKind::Replicate => "owner/name",
            _ => "owner/app or owner/app/endpoint",
        };
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: must look like {shape}"),
        ));
    }
    Ok(model.to_owned())
}

/// Refuses a `seed` outside what the provider accepts (a 31-bit
/// non-negative integer for every hosted kind here).
pub fn check_seed(name: &str, profile: &EditorProfile) -> Result<(), EditorConfigError> {
    match profile.seed {
        Some(s) if !(0..=i64::from(i32::MAX)).contains(&s) => Err(EditorConfigError::invalid(
            name,
            "seed",
            format!("{s}: must be between 0 and {}", i32::MAX),
        )),
        _ => Ok(()),
    }
}

/// The seed a request asks for (`EditRequest::seed`: each candidate's own
/// when a turn has several), which replaces the profile's `seed` for that
/// request; `None` leaves the profile's in charge. The loop only hands out
/// seeds within the range [`check_seed`] allows for profiles.
pub fn candidate_seed(request: &EditRequest<'_>) -> Option<i64> {
    if let Some(seed) = request.seed {
        debug_assert!(
            (0..=i64::from(i32::MAX)).contains(&seed),
            "candidate seed {seed} is outside 0..=2^31-1"
        );
    }
    request.seed
}

/// The configured `output_format` of the kinds that take `png` or `jpeg`
/// (`jpg` accepted as `jpeg`); anything else is an error naming the key.
pub fn check_output_format(
    name: &str,
    profile: &EditorProfile,
) -> Result<Option<&'static str>, EditorConfigError> {
    match profile.output_format.as_deref().map(str::trim) {
        None => Ok(None),
        Some("png") => Ok(Some("png")),
        Some("jpeg" | "jpg") => Ok(Some("jpeg")),
        Some(other) => Err(EditorConfigError::invalid(
            name,
            "output_format",
            format!("{other:?}: must be \"png\" or \"jpeg\""),
        )),
    }
}

/// Refuses a `safety_tolerance` outside `range` (what the provider accepts).
pub fn check_safety_tolerance(
    name: &str,
    profile: &EditorProfile,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, EditorConfigError> {
    match profile.safety_tolerance {
        Some(t) if !range.contains(&t) => Err(EditorConfigError::invalid(
            name,
            "safety_tolerance",
            format!(
                "{t}: must be between {} and {} for the {} kind",
                range.start(),
                range.end(),
                profile.kind
            ),
        )),
        t => Ok(t),
    }
}

/// Reads the API key from the variable named by `api_key_env`, if any.
pub fn read_api_key(
    name: &str,
    profile: &EditorProfile,
) -> Result<Option<String>, EditorConfigError> {
    let Some(var) = &profile.api_key_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
        _ => Err(EditorConfigError::MissingApiKey {
            name: name.to_owned(),
            var: var.clone(),
        }),
    }
}
