//! Turning a create-job request (JSON or multipart) into a validated job:
//! the image (inline or fetched), the instruction, the editor and options.

use std::net::SocketAddr;
use std::sync::Arc;

pub use editthinker_core::net::is_forbidden;
use std::time::Duration;

use axum::extract::multipart::{Field, Multipart};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use editthinker_core::{text, Image, ImageError, JobOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// Limits on what clients may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest image, in bytes.
    pub max_image_bytes: usize,
    /// Largest image, in pixels (checked from the header, before decoding).
    pub max_pixels: u64,
    /// Longest instruction, in characters.
    pub max_instruction_chars: usize,
    /// Allow image URLs on loopback, private, link-local or metadata addresses.
    pub allow_private_image_urls: bool,
    /// The same for webhook URLs.
    pub allow_private_webhook_urls: bool,
    /// Total time allowed to fetch an image URL.
    pub image_fetch_timeout: Duration,
    /// Largest `metadata`, as compact JSON, in bytes.
    pub max_metadata_bytes: usize,
    /// Deepest nesting of objects and arrays in a JSON body.
    pub max_json_depth: usize,
    /// Most parts in a multipart body.
    pub max_multipart_parts: usize,
    /// Largest multipart part other than the image, in bytes.
    pub max_form_field_bytes: usize,
    /// Largest request head (names and values of every header), in bytes.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's body once its head is in.
    pub body_read_timeout: Duration,
    /// Image decodes at once in this process (each can take a core and
    /// tens of megabytes); further creates wait for a slot.
    pub decode_slots: Arc<Semaphore>,
    /// Whether the workers have a `[verifier]` (default `false`): without
    /// one, a job whose options need it (`options.rank_by = "verifier"`,
    /// `options.stop.verifier`) is refused with a `422` naming the option.
    pub verifier_configured: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_instruction_chars: 4000,
            allow_private_image_urls: false,
            allow_private_webhook_urls: false,
            image_fetch_timeout: Duration::from_secs(20),
            max_metadata_bytes: 16 * 1024,
            max_json_depth: 32,
            max_multipart_parts: 16,
            max_form_field_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            body_read_timeout: Duration::from_secs(60),
            decode_slots: Arc::new(Semaphore::new(default_decode_slots())),
            verifier_configured: false,
        }
    }
}

/// A 1×1 PNG, the document's example image.
const EXAMPLE_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// Image decodes at once by default: one per core.
pub fn default_decode_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `POST /v1/jobs` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "image": {"base64": EXAMPLE_PNG_BASE64},
    "instruction": "make the sky purple",
    "options": {"max_turns": 2},
    "metadata": {"order": "1234"}
}))]
pub struct CreateJobRequest {
    /// The source image: exactly one of `base64` or `url`.
    pub image: ImageInput,
    /// What to change, 1 to 4,000 characters.
    #[schema(min_length = 1, max_length = 4000)]
    pub instruction: String,
    /// A configured editor name; the default editor when absent.
    pub editor: Option<String>,
    /// Loop options; server defaults for what is absent.
    pub options: Option<JobOptions>,
    /// Any JSON object, stored and returned as given.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Where to POST the job's events (Standard Webhooks).
    pub webhook: Option<WebhookInput>,
    /// −10 to 10 (default 0): higher runs first.
    #[schema(minimum = -10, maximum = 10)]
    pub priority: Option<i32>,
}

/// `POST /v1/jobs` as `multipart/form-data` (the document's schema only;
/// [`parse_multipart`] reads the parts): the image is a file part, the
/// other fields are text parts, `options`, `metadata` and `webhook` JSON
/// text.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateJobForm {
    /// The source image file.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// What to change, 1 to 4,000 characters.
    #[schema(min_length = 1, max_length = 4000)]
    instruction: String,
    /// A configured editor name; the default editor when absent.
    #[schema(nullable = false)]
    editor: Option<String>,
    /// Loop options (JSON text); server defaults for what is absent.
    #[schema(nullable = false)]
    options: Option<JobOptions>,
    /// Any JSON object (JSON text), stored and returned as given.
    #[schema(value_type = Option<Object>, nullable = false)]
    metadata: Option<serde_json::Value>,
    /// Where to POST the job's events (JSON text).
    #[schema(nullable = false)]
    webhook: Option<WebhookInput>,
    /// −10 to 10 (default 0): higher runs first.
    #[schema(minimum = -10, maximum = 10, nullable = false)]
    priority: Option<i32>,
}

/// A job's webhook: its events are POSTed, signed, to `url`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// An `http`/`https` URL (the same address rules as image URLs).
    pub url: String,
    /// Stored event types to deliver; default the terminal ones
    /// (`job.succeeded`, `job.failed`, `job.canceled`).
    #[schema(value_type = Option<Vec<crate::contract::EventType>>, min_items = 1)]
    pub events: Option<Vec<String>>,
}

/// Event types a webhook may ask for.
pub const WEBHOOK_EVENT_TYPES: [&str; 9] = [
    "job.queued",
    "job.started",
    "job.retrying",
    "turn.edited",
    "turn.critiqued",
    "turn.chosen",
    "job.succeeded",
    "job.failed",
    "job.canceled",
];

/// A webhook's events when it names none.
pub const DEFAULT_WEBHOOK_EVENTS: [&str; 3] = ["job.succeeded", "job.failed", "job.canceled"];

/// Highest and lowest `priority`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -10..=10;

/// Where the source image comes from.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// Base64 (standard alphabet) of the image bytes; a `data:` URL prefix is accepted.
    pub base64: Option<String>,
    /// An `http`/`https` URL the server fetches.
    pub url: Option<String>,
}

/// A create request whose fields are validated, the image still raw.
#[derive(Debug)]
pub struct ParsedCreate {
    /// Image bytes (not yet validated as an image).
    pub image: Bytes,
    /// The instruction, trimmed.
    pub instruction: String,
    /// Editor name as sent.
    pub editor: Option<String>,
    /// Options as sent.
    pub options: JobOptions,
    /// Metadata as sent.
    pub metadata: serde_json::Value,
    /// The webhook, its events filled in (its address not yet resolved).
    pub webhook: Option<WebhookInput>,
    /// Claim priority.
    pub priority: i32,
}

/// Parses a JSON create body, fetching the image when given by URL.
pub async fn parse_json(body: &[u8], limits: &Limits) -> Result<ParsedCreate, ApiError> {
    check_json_shape(body, "", limits.max_json_depth)?;
    let request: CreateJobRequest = parse_strict(serde_json::Deserializer::from_slice(body))?;
    let image = match (request.image.base64, request.image.url) {
        (Some(b64), None) => decode_base64(&b64, limits)?,
        (None, Some(url)) => fetch_image(&url, limits).await?,
        _ => {
            return Err(ApiError::invalid(
                "image",
                "give exactly one of image.base64 or image.url",
            ))
        }
    };
    finish(
        image,
        Fields {
            instruction: request.instruction,
            editor: request.editor,
            options: request.options,
            metadata: request.metadata,
            webhook: request.webhook,
            priority: request.priority,
        },
        limits,
    )
}

/// Parses a multipart create body: an `image` file part plus `instruction`,
/// `editor`, `options` (JSON text) and `metadata` (JSON text) fields.
pub async fn parse_multipart(
    mut multipart: Multipart,
    limits: &Limits,
) -> Result<ParsedCreate, ApiError> {
    let (mut image, mut instruction, mut editor, mut options, mut metadata) =
        (None, None, None, None, None);
    let (mut webhook, mut priority) = (None, None);
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        parts += 1;
        if parts > limits.max_multipart_parts {
            return Err(ApiError::invalid(
                "multipart",
                format!("has more than {} parts", limits.max_multipart_parts),
            ));
        }
        let name = field.name().unwrap_or_default().to_string();
        let text_limit = limits.max_form_field_bytes;
        match name.as_str() {
            "image" => image = Some(read_limited_field(field, limits.max_image_bytes).await?),
            "instruction" => instruction = Some(text_field(field, text_limit).await?),
            "editor" => editor = Some(text_field(field, text_limit).await?),
            // `null` is what a JSON serializer writes for an absent value.
            "options" => {
                options = json_text_field::<Option<JobOptions>>(field, "options", text_limit)
                    .await?
            }
            "metadata" => {
                let text = text_field(field, text_limit).await?;
                check_json_shape(text.as_bytes(), "metadata", limits.max_json_depth)?;
                let parsed: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ApiError::invalid("metadata", format!("must be JSON: {e}")))?;
                metadata = Some(parsed).filter(|m| !m.is_null());
            }
            "webhook" => {
                webhook = json_text_field::<Option<WebhookInput>>(field, "webhook", text_limit)
                    .await?
            }
            "priority" => {
                let text = text_field(field, text_limit).await?;
                let parsed: i32 = text
                    .trim()
                    .parse()
                    .map_err(|_| ApiError::invalid("priority", "must be an integer"))?;
                priority = Some(parsed);
            }
            "" => return Err(ApiError::invalid("multipart", "every part needs a name")),
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown form field (expected image, instruction, editor, options, metadata, webhook, priority)",
                ))
            }
        }
    }
    let image =
        image.ok_or_else(|| ApiError::invalid("image", "an image file part is required"))?;
    let instruction = instruction.ok_or_else(|| ApiError::invalid("instruction", "is required"))?;
    finish(
        image,
        Fields {
            instruction,
            editor,
            options,
            metadata,
            webhook,
            priority,
        },
        limits,
    )
}

/// A multipart field holding JSON text of a typed value; errors name the
/// path inside it (`options.max_turns`).
async fn json_text_field<T: serde::de::DeserializeOwned>(
    field: Field<'_>,
    name: &str,
    limit: usize,
) -> Result<T, ApiError> {
    let text = text_field(field, limit).await?;
    check_json_shape(text.as_bytes(), name, MAX_PART_JSON_DEPTH)?;
    parse_strict(serde_json::Deserializer::from_str(&text)).map_err(|e| prefixed(e, name))
}

/// Nesting allowed in a multipart JSON part (options, webhook: two levels).
const MAX_PART_JSON_DEPTH: usize = 4;

/// Parses exactly one JSON value of type `T`: nothing but white space may
/// follow it, and errors name the field.
fn parse_strict<'de, T, R>(mut de: serde_json::Deserializer<R>) -> Result<T, ApiError>
where
    T: Deserialize<'de>,
    R: serde_json::de::Read<'de>,
{
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| ApiError::Malformed {
        field: None,
        detail: format!(
            "the body must be one JSON object with nothing after it: {}",
            strip_position(&e.to_string())
        ),
    })?;
    Ok(value)
}

/// A create request's fields other than the image, as sent.
struct Fields {
    instruction: String,
    editor: Option<String>,
    options: Option<JobOptions>,
    metadata: Option<serde_json::Value>,
    webhook: Option<WebhookInput>,
    priority: Option<i32>,
}

fn finish(image: Bytes, fields: Fields, limits: &Limits) -> Result<ParsedCreate, ApiError> {
    check_text("instruction", &fields.instruction)?;
    if let Some(editor) = &fields.editor {
        check_text("editor", editor)?;
    }
    if let Some(metadata) = &fields.metadata {
        text::check_client_json(metadata)
            .map_err(|(path, rule)| ApiError::invalid(format!("metadata{path}"), rule))?;
    }
    if let Some(webhook) = &fields.webhook {
        check_text(WEBHOOK_URL.field, &webhook.url)?;
    }
    let instruction = fields.instruction.trim().to_string();
    if instruction.is_empty() {
        return Err(ApiError::invalid("instruction", "must not be empty"));
    }
    let chars = instruction.chars().count();
    if chars > limits.max_instruction_chars {
        return Err(ApiError::invalid(
            "instruction",
            format!(
                "must be at most {} characters (got {chars})",
                limits.max_instruction_chars
            ),
        ));
    }
    let options = fields.options.unwrap_or_default();
    options
        .validate()
        .map_err(|e| ApiError::invalid(e.field, e.rule))?;
    if let Some(field) = options
        .verifier_field()
        .filter(|_| !limits.verifier_configured)
    {
        return Err(ApiError::invalid(
            field,
            "needs a [verifier] section in the server's configuration",
        ));
    }
    let metadata = fields.metadata.unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        return Err(ApiError::invalid("metadata", "must be a JSON object"));
    }
    let metadata_bytes = metadata.to_string().len();
    if metadata_bytes > limits.max_metadata_bytes {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "is {metadata_bytes} bytes as JSON; at most {} are allowed",
                limits.max_metadata_bytes
            ),
        ));
    }
    let priority = fields.priority.unwrap_or(0);
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(ApiError::invalid(
            "priority",
            format!(
                "must be between {} and {} (got {priority})",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    let webhook = fields.webhook.map(check_webhook).transpose()?;
    Ok(ParsedCreate {
        image,
        instruction,
        editor: fields.editor,
        options,
        metadata,
        webhook,
        priority,
    })
}

/// Client text under the one rule for stored text (`editthinker_core::text`).
fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    text::check_client_text(value).map_err(|rule| ApiError::invalid(field, rule))
}

/// Checks a webhook's URL syntax and event types; fills in the default
/// events. (Its address is checked when it is resolved, at create.)
fn check_webhook(webhook: WebhookInput) -> Result<WebhookInput, ApiError> {
    editthinker_webhooks::check_url(&webhook.url)
        .map_err(|rule| ApiError::invalid(WEBHOOK_URL.field, rule))?;
    let events = match webhook.events {
        None => DEFAULT_WEBHOOK_EVENTS.map(String::from).to_vec(),
        Some(events) => {
            if events.is_empty() {
                return Err(ApiError::invalid(
                    "webhook.events",
                    "must name at least one event type (or be left out for the terminal ones)",
                ));
            }
            for (i, kind) in events.iter().enumerate() {
                if !WEBHOOK_EVENT_TYPES.contains(&kind.as_str()) {
                    return Err(ApiError::invalid(
                        format!("webhook.events[{i}]"),
                        format!(
                            "unknown event type {kind:?}; known: {}",
                            WEBHOOK_EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
            let mut unique: Vec<String> = Vec::with_capacity(events.len());
            for kind in events {
                if !unique.contains(&kind) {
                    unique.push(kind);
                }
            }
            unique
        }
    };
    Ok(WebhookInput {
        url: webhook.url,
        events: Some(events),
    })
}

/// Resolves a webhook's host and, unless private targets are allowed,
/// refuses one that reaches a loopback, private, link-local or metadata
/// address (the delivery checks again, against the address it connects to).
pub async fn check_webhook_address(url: &str, limits: &Limits) -> Result<(), ApiError> {
    if limits.allow_private_webhook_urls {
        return Ok(());
    }
    let url = url::Url::parse(url)
        .map_err(|e| ApiError::invalid(WEBHOOK_URL.field, format!("is not a valid URL: {e}")))?;
    let deadline = tokio::time::Instant::now() + limits.image_fetch_timeout;
    resolve_checked(&url, &WEBHOOK_URL, deadline, false).await?;
    Ok(())
}

/// A kind of client-given URL, for the errors that name it.
struct UrlRule {
    field: &'static str,
    forbidden_code: ErrorCode,
    /// The end of the "may not target" sentence.
    refusal: &'static str,
}

const IMAGE_URL: UrlRule = UrlRule {
    field: "image.url",
    forbidden_code: ErrorCode::ImageUrlForbidden,
    refusal: "which image URLs may not target",
};

const WEBHOOK_URL: UrlRule = UrlRule {
    field: "webhook.url",
    forbidden_code: ErrorCode::WebhookUrlForbidden,
    refusal: "which webhook URLs may not target (allow_private_webhook_urls)",
};

/// Resolves `url`'s host before `deadline` and, unless `allow_private`,
/// refuses it when any address is forbidden (`is_forbidden`). Returns the
/// host as looked up (IPv6 brackets off) and its addresses, for pinning.
async fn resolve_checked(
    url: &url::Url,
    rule: &UrlRule,
    deadline: tokio::time::Instant,
    allow_private: bool,
) -> Result<(String, Vec<SocketAddr>), ApiError> {
    let host = url
        .host_str()
        .ok_or_else(|| ApiError::invalid(rule.field, "has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> = tokio::time::timeout_at(
        deadline,
        tokio::net::lookup_host((lookup_host.as_str(), port)),
    )
    .await
    .map_err(|_| ApiError::invalid(rule.field, "timed out resolving the host"))?
    .map_err(|e| ApiError::invalid(rule.field, format!("could not resolve {host}: {e}")))?
    .collect();
    if addrs.is_empty() {
        return Err(ApiError::invalid(
            rule.field,
            format!("{host} has no addresses"),
        ));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
            return Err(ApiError::Invalid {
                code: rule.forbidden_code,
                field: rule.field.into(),
                rule: format!(
                    "{host} resolves to {}, a loopback, private, link-local or metadata address, {}",
                    bad.ip(),
                    rule.refusal
                ),
            });
        }
    }
    Ok((lookup_host, addrs))
}

/// Validates image bytes: size, format, declared pixels (before decoding),
/// then a full decode. Runs the decode off the async threads.
pub async fn validate_image(bytes: Bytes, limits: &Limits) -> Result<Image, ApiError> {
    if bytes.len() > limits.max_image_bytes {
        return Err(too_large(bytes.len(), limits.max_image_bytes));
    }
    let max_pixels = limits.max_pixels;
    let probed = Image::probe(bytes, max_pixels).map_err(image_error)?;
    let checked = probed.clone();
    // Bounded per process: a burst of creates queues here instead of
    // taking every core and the memory of every decode at once.
    let _slot = limits
        .decode_slots
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || checked.decode().map(|_| ()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(image_error)?;
    Ok(probed)
}

fn image_error(e: ImageError) -> ApiError {
    let code = match e {
        ImageError::UnknownFormat => ErrorCode::ImageUnsupported,
        ImageError::Undecodable(_) | ImageError::Empty => ErrorCode::ImageUndecodable,
        ImageError::TooManyPixels { .. } => ErrorCode::ImageTooManyPixels,
        ImageError::TooManyBytes { .. } | ImageError::OverMemoryBudget { .. } => {
            ErrorCode::ImageTooLargeDecoded
        }
        ImageError::TooCompressed { .. } => ErrorCode::ImageTooCompressed,
    };
    ApiError::Invalid {
        code,
        field: "image".into(),
        rule: e.to_string(),
    }
}

fn too_large(got: usize, limit: usize) -> ApiError {
    ApiError::TooLarge {
        field: "image".into(),
        detail: format!("the image is over the limit of {limit} bytes (got at least {got})"),
    }
}

fn decode_base64(text: &str, limits: &Limits) -> Result<Bytes, ApiError> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(',')
            .filter(|(meta, _)| meta.ends_with(";base64"))
            .map(|(_, data)| data)
            .ok_or_else(|| {
                ApiError::invalid("image.base64", "a data: URL must be base64-encoded")
            })?,
        None => text,
    };
    // Refuse before decoding: base64 is 4 characters per 3 bytes.
    let approx = payload.len() / 4 * 3;
    if approx > limits.max_image_bytes + 3 {
        return Err(too_large(approx, limits.max_image_bytes));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::invalid("image.base64", format!("is not valid base64: {e}")))?;
    Ok(Bytes::from(bytes))
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = inner.to_string();
    match inner.classify() {
        serde_json::error::Category::Data => {
            // The path already ends in an unknown field's own name; a
            // missing or repeated field is named only in the message.
            let parent = if path == "." { String::new() } else { path };
            let named = ["missing field `", "duplicate field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p))
                .and_then(|rest| rest.split('`').next());
            let field = match named {
                Some(name) => join_path(&parent, name),
                None => field_name(&parent),
            };
            let rule = crate::json_terms::describe(&field, &strip_position(&message));
            ApiError::invalid(crate::json_terms::cut(&field), rule)
        }
        _ => ApiError::Malformed {
            field: None,
            detail: format!(
                "the body is not valid JSON: {}",
                crate::json_terms::cut_quotes(&message)
            ),
        },
    }
}

/// serde_json appends " at line L column C", which means nothing to clients
/// that did not write the JSON by hand; keep the rule.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn prefixed(error: ApiError, prefix: &str) -> ApiError {
    match error {
        ApiError::Invalid { code, field, rule } => ApiError::Invalid {
            code,
            field: if field == "body" {
                prefix.to_string()
            } else {
                format!("{prefix}.{field}")
            },
            rule,
        },
        ApiError::Malformed { detail, .. } => {
            ApiError::invalid(prefix, format!("must be a JSON object: {detail}"))
        }
        other => other,
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge {
            field: "body".into(),
            detail: e.body_text(),
        };
    }
    ApiError::Malformed {
        field: Some("multipart".into()),
        detail: format!("malformed multipart body: {}", e.body_text()),
    }
}

async fn read_limited_field(mut field: Field<'_>, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > limit {
            return Err(too_large(buf.len() + chunk.len(), limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn text_field(field: Field<'_>, limit: usize) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let bytes = match read_limited_field(field, limit).await {
        Err(ApiError::TooLarge { .. }) => {
            return Err(ApiError::TooLarge {
                field: name,
                detail: format!("form fields other than the image are at most {limit} bytes"),
            })
        }
        other => other?,
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::invalid(name, "must be UTF-8 text"))
}

/// Fields of a create request that hold arrays (dotted paths, `[]` for an
/// array's items); every other array is refused before parsing.
const ARRAY_FIELDS: [&str; 1] = ["webhook.events"];

/// Fields whose JSON is the client's own, any shape.
const FREE_FORM_FIELDS: [&str; 1] = ["metadata"];

/// One linear scan of JSON text before it is parsed, so a hostile body
/// costs no more than reading it: objects and arrays nest at most
/// `max_depth` deep, and arrays appear only where the request has them
/// ([`ARRAY_FIELDS`], or inside [`FREE_FORM_FIELDS`]). serde would read an
/// array in an object's place as the object's fields in order, which gets
/// round the unknown-field rule. `base` is the text's own path: "" for a
/// whole body, `options` for a multipart part holding the options.
pub fn check_json_shape(text: &[u8], base: &str, max_depth: usize) -> Result<(), ApiError> {
    /// An open object (with the key whose value comes next) or array.
    struct Open {
        path: String,
        key: Option<String>,
        is_array: bool,
    }
    let mut stack: Vec<Open> = Vec::new();
    let (mut in_string, mut escaped, mut key) = (false, false, None::<Vec<u8>>);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            if let Some(k) = key.as_mut() {
                if in_string {
                    k.push(b);
                } else if let (Some(k), Some(open)) = (key.take(), stack.last_mut()) {
                    open.key = Some(String::from_utf8_lossy(&k).into_owned());
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                // A string right after `{` or `,` in an object is a key.
                if stack.last().is_some_and(|o| !o.is_array && o.key.is_none()) {
                    key = Some(Vec::new());
                }
            }
            b',' => {
                if let Some(open) = stack.last_mut().filter(|o| !o.is_array) {
                    open.key = None;
                }
            }
            b'{' | b'[' => {
                let path = match stack.last() {
                    None => base.to_string(),
                    Some(open) if open.is_array => format!("{}[]", open.path),
                    Some(open) => join_path(&open.path, open.key.as_deref().unwrap_or_default()),
                };
                if stack.len() == max_depth {
                    return Err(ApiError::invalid(
                        field_name(&path),
                        format!("nests objects and arrays more than {max_depth} levels deep"),
                    ));
                }
                let free = FREE_FORM_FIELDS.iter().any(|f| {
                    path.strip_prefix(f)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                });
                if b == b'[' && !free && !ARRAY_FIELDS.contains(&path.as_str()) {
                    return Err(ApiError::invalid(
                        field_name(&path),
                        "must be a JSON object, not an array",
                    ));
                }
                stack.push(Open {
                    path,
                    key: None,
                    is_array: b == b'[',
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(())
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The field a problem names for a path: the body itself when it is empty.
fn field_name(path: &str) -> String {
    if path.is_empty() {
        "body".into()
    } else {
        path.into()
    }
}

/// Fetches an image URL with the upload limits, a timeout, at most five
/// redirects, and (unless allowed) no private, loopback, link-local or
/// metadata targets — checked on every hop, against the address we connect to.
pub async fn fetch_image(url: &str, limits: &Limits) -> Result<Bytes, ApiError> {
    const FIELD: &str = IMAGE_URL.field;
    let mut url = url::Url::parse(url)
        .map_err(|e| ApiError::invalid(FIELD, format!("is not a valid URL: {e}")))?;
    let deadline = tokio::time::Instant::now() + limits.image_fetch_timeout;
    for _hop in 0..=5 {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiError::invalid(FIELD, "must be an http or https URL"));
        }
        let (lookup_host, addrs) =
            resolve_checked(&url, &IMAGE_URL, deadline, limits.allow_private_image_urls).await?;
        // Pin the checked addresses so the connection cannot be re-resolved elsewhere.
        // No environment proxy: a proxy would resolve the host itself, and
        // the address check above would no longer hold.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&lookup_host, &addrs)
            .build()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let response = tokio::time::timeout_at(deadline, client.get(url.clone()).send())
            .await
            .map_err(|_| ApiError::invalid(FIELD, "timed out fetching the image"))?
            .map_err(|e| ApiError::invalid(FIELD, format!("could not fetch the image: {e}")))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::invalid(FIELD, "redirect without a Location"))?;
            url = url
                .join(location)
                .map_err(|e| ApiError::invalid(FIELD, format!("bad redirect target: {e}")))?;
            continue;
        }
        if !status.is_success() {
            return Err(ApiError::invalid(
                FIELD,
                format!("fetching the image answered HTTP {}", status.as_u16()),
            ));
        }
        if let Some(len) = response.content_length() {
            if len > limits.max_image_bytes as u64 {
                return Err(too_large(len as usize, limits.max_image_bytes));
            }
        }
        let mut buf = BytesMut::new();
        let mut stream = response.bytes_stream();
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| ApiError::invalid(FIELD, "timed out fetching the image"))?;
            let Some(chunk) = next else { break };
            let chunk = chunk
                .map_err(|e| ApiError::invalid(FIELD, format!("could not fetch the image: {e}")))?;
            if buf.len() + chunk.len() > limits.max_image_bytes {
                return Err(too_large(buf.len() + chunk.len(), limits.max_image_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        return Ok(buf.freeze());
    }
    Err(ApiError::invalid(FIELD, "too many redirects (at most 5)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let limits = Limits::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let field = |body: &str| match rt.block_on(parse_json(body.as_bytes(), &limits)) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            field(r#"{"image":{"base64":"aGk="},"instruction":"x","colour":1}"#),
            "colour"
        );
        assert_eq!(
            field(r#"{"image":{"base64":"aGk="},"instruction":"x","options":{"turns":1}}"#),
            "options.turns"
        );
        assert_eq!(
            field(r#"{"image":{"base64":"aGk="},"instruction":"x","options":{"max_turns":"a"}}"#),
            "options.max_turns"
        );
        assert_eq!(
            field(r#"{"image":{"base64":"aGk="},"instruction":"  "}"#),
            "instruction"
        );
        assert_eq!(field(r#"{"image":{},"instruction":"x"}"#), "image");
        assert_eq!(
            field(r#"{"image":{"base64":"!!"},"instruction":"x"}"#),
            "image.base64"
        );
        assert!(matches!(
            rt.block_on(parse_json(b"{not json", &limits)),
            Err(ApiError::Malformed { .. })
        ));
    }

    fn parse(body: &str) -> Result<ParsedCreate, ApiError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(parse_json(body.as_bytes(), &Limits::default()))
    }

    fn invalid_field(body: &str) -> String {
        match parse(body) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    const OK: &str = r#"{"image":{"base64":"aGk="},"instruction":"x"}"#;

    #[test]
    fn a_body_is_one_object_and_nothing_after_it() {
        assert!(parse(OK).is_ok());
        assert!(parse(&format!("  {OK}\n")).is_ok());
        for body in [
            format!("{OK}GARBAGE"),
            format!("{OK}{OK}"),
            format!("{OK} 1"),
        ] {
            assert!(
                matches!(parse(&body), Err(ApiError::Malformed { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn arrays_only_where_the_request_has_them() {
        assert_eq!(invalid_field(r#"[{"base64":"aGk="},"x"]"#), "body");
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="},"instruction":"x","options":[1]}"#),
            "options"
        );
        assert_eq!(
            invalid_field(r#"{"image":["aGk="],"instruction":"x"}"#),
            "image"
        );
        assert_eq!(
            invalid_field(
                r#"{"image":{"base64":"aGk="},"instruction":"x","options":{"stop":[9,9]}}"#
            ),
            "options.stop"
        );
        // Keys and strings that look like arrays do not count.
        let parsed = parse(
            r#"{"image":{"base64":"aGk="},"instruction":"[x] \"{[\"","metadata":{"l":[1,[2]],"o":[{"k":[]}]},"webhook":{"url":"https://example.com/h","events":["job.failed"]}}"#,
        )
        .unwrap();
        assert_eq!(parsed.instruction, r#"[x] "{[""#);
    }

    #[test]
    fn missing_and_repeated_fields_are_named() {
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="}}"#),
            "instruction"
        );
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="},"instruction":"x","instruction":"y"}"#),
            "instruction"
        );
        assert_eq!(
            invalid_field(
                r#"{"image":{"base64":"aGk="},"instruction":"x","options":{"max_turns":1,"max_turns":2}}"#
            ),
            "options.max_turns"
        );
    }

    #[test]
    fn control_characters_in_client_text_are_refused() {
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="},"instruction":"a\u0000b"}"#),
            "instruction"
        );
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="},"instruction":"a\u202eb"}"#),
            "instruction"
        );
        assert_eq!(
            invalid_field(
                r#"{"image":{"base64":"aGk="},"instruction":"x","metadata":{"k":["ok","\u0000"]}}"#
            ),
            "metadata.k[1]"
        );
        assert_eq!(
            invalid_field(
                r#"{"image":{"base64":"aGk="},"instruction":"x","metadata":{"k\u0000":1}}"#
            ),
            "metadata.k\u{0}"
        );
        assert_eq!(
            invalid_field(r#"{"image":{"base64":"aGk="},"instruction":"x","editor":"e\u0000"}"#),
            "editor"
        );
        // Tabs and line breaks are text.
        assert!(parse(r#"{"image":{"base64":"aGk="},"instruction":"a\tb\nc"}"#).is_ok());
    }

    #[test]
    fn options_that_need_a_verifier_need_one_configured() {
        let body = |options: &str| {
            format!(r#"{{"image":{{"base64":"aGk="}},"instruction":"x","options":{options}}}"#)
        };
        let refused = |options: &str| match parse(&body(options)) {
            Err(ApiError::Invalid { field, rule, .. }) => (field, rule),
            other => panic!("{options}: {other:?}"),
        };
        let (field, rule) = refused(r#"{"rank_by":"verifier","candidates":3}"#);
        assert_eq!(field, "options.rank_by");
        assert_eq!(
            rule,
            "needs a [verifier] section in the server's configuration"
        );
        assert_eq!(
            refused(r#"{"stop":{"verifier":7}}"#).0,
            "options.stop.verifier"
        );
        assert!(parse(&body(r#"{"rank_by":"thinker","candidates":3}"#)).is_ok());
        let limits = Limits {
            verifier_configured: true,
            ..Limits::default()
        };
        let parsed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(parse_json(
                body(r#"{"rank_by":"verifier","stop":{"verifier":7}}"#).as_bytes(),
                &limits,
            ))
            .unwrap();
        assert_eq!(parsed.options.rank_by, editthinker_core::RankBy::Verifier);
    }

    #[test]
    fn every_stored_event_type_may_be_asked_for() {
        let stored: Vec<&str> = crate::contract::EVENT_DATA
            .iter()
            .map(|(kind, _)| *kind)
            .filter(|kind| *kind != "turn.thinking")
            .collect();
        assert_eq!(stored, WEBHOOK_EVENT_TYPES);
    }
}
