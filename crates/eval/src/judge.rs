//! The judge (`[judge]` in `eval.toml`, docs/eval.md): an OpenAI-compatible
//! vision-language server (GPT-4.1, or Qwen2.5-VL-72B on vLLM, as the
//! editing benchmarks use) that scores every recorded turn the VIEScore way.
//!
//! Per image, two non-streamed `POST {base_url}/chat/completions` requests
//! are sent at once, each one user message of `image_url` parts (PNG data
//! URLs, the longer side scaled down to `max_image_edge`) followed by our
//! prompt:
//! - semantic consistency: the source image, then the edited one, and the
//!   instruction; answered `{"score": [followed, not_over_edited],
//!   "reasoning": "…"}`;
//! - perceptual quality: the edited image alone; answered
//!   `{"score": [natural, artifact_free], "reasoning": "…"}`.
//!
//! Every score is 0 to 10; SC = min(followed, not_over_edited), PQ =
//! min(natural, artifact_free), and O = √(SC·PQ). The prompts are ours (in
//! the spirit of VIEScore's), so any judge model speaking that answer form
//! plugs in.
//!
//! An answer whose JSON cannot be found or fails validation is asked again,
//! as are connection failures, 408, 429 and 5xx (with exponential backoff),
//! all within `max_retries`; 401/403 end as [`JudgeError::Auth`] and other
//! 4xx as [`JudgeError::Rejected`].
//!
//! Every judgement is cached in the run folder (JSON Lines, one line
//! appended per judgement as soon as it is made), keyed by the judge model,
//! the instruction and both images' bytes, so a rerun never asks the judge
//! the same question twice.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use image::{DynamicImage, ImageFormat, ImageReader};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

/// First backoff delay after a transient failure; doubles with each retry.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest backoff delay between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` waited out.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// Characters of a server body or a model answer kept in an error message.
const EXCERPT_CHARS: usize = 300;
/// Smallest `max_image_edge` accepted (a vision encoder wants at least
/// 28 pixels a side).
const MIN_IMAGE_EDGE: u32 = 32;

/// The `[judge]` section of `eval.toml`. Unknown keys are rejected to catch
/// typos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Base URL of the chat-completions API, e.g. `http://127.0.0.1:8000/v1`
    /// or `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent in each request, e.g. `gpt-4.1` or
    /// `Qwen/Qwen2.5-VL-72B-Instruct`.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key
    /// itself), sent as a bearer token; none by default.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Total time allowed for one HTTP request, in seconds (default 120).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Attempts after the first, per request, for transient HTTP failures
    /// (connection, timeout, 408, 429, 5xx) and malformed answers alike
    /// (default 3).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Longer image side sent to the judge, in pixels; larger images are
    /// scaled down (default 1024, minimum 32).
    #[serde(default = "default_max_image_edge")]
    pub max_image_edge: u32,
    /// Sampling temperature (default 0, so judgements are repeatable).
    #[serde(default)]
    pub temperature: f64,
}

fn default_timeout_seconds() -> u64 {
    120
}

fn default_max_retries() -> u32 {
    3
}

fn default_max_image_edge() -> u32 {
    1024
}

impl JudgeConfig {
    /// Checks every key; returns the parsed base URL and the trimmed model.
    fn check(&self) -> anyhow::Result<(Url, String)> {
        let url = Url::parse(self.base_url.trim())
            .with_context(|| format!("judge.base_url {:?} is not a URL", self.base_url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("judge.base_url {:?} must be http or https", self.base_url);
        }
        let model = self.model.trim();
        if model.is_empty() {
            bail!("judge.model is empty");
        }
        if self.timeout_seconds == 0 {
            bail!("judge.timeout_seconds must be at least 1");
        }
        if self.max_image_edge < MIN_IMAGE_EDGE {
            bail!(
                "judge.max_image_edge {} must be at least {MIN_IMAGE_EDGE}",
                self.max_image_edge
            );
        }
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            bail!(
                "judge.temperature {} must be within 0 to 2",
                self.temperature
            );
        }
        Ok((url, model.to_string()))
    }
}

/// The judge's verdict on one edited image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Semantic consistency: `min(followed, not_over_edited)`, 0 to 10.
    pub sc: f64,
    /// Perceptual quality: `min(natural, artifact_free)`, 0 to 10.
    pub pq: f64,
    /// Overall: `sqrt(sc × pq)`, 0 to 10.
    pub o: f64,
    /// How completely the instruction was carried out.
    pub followed: f64,
    /// How well what the instruction did not mention was left alone.
    pub not_over_edited: f64,
    /// How natural the edited image looks.
    pub natural: f64,
    /// How free of artifacts the edited image is.
    pub artifact_free: f64,
    /// The judge's reasoning for the semantic-consistency scores.
    pub sc_reasoning: String,
    /// The judge's reasoning for the perceptual-quality scores.
    pub pq_reasoning: String,
    /// The judge model that gave it.
    pub model: String,
}

impl Judgement {
    /// The judgement of the two answers: SC, PQ and O computed from the
    /// four scores.
    fn of(model: &str, semantic: Answer, perceptual: Answer) -> Self {
        let [followed, not_over_edited] = semantic.score;
        let [natural, artifact_free] = perceptual.score;
        let sc = followed.min(not_over_edited);
        let pq = natural.min(artifact_free);
        Self {
            sc,
            pq,
            o: (sc * pq).sqrt(),
            followed,
            not_over_edited,
            natural,
            artifact_free,
            sc_reasoning: semantic.reasoning,
            pq_reasoning: perceptual.reasoning,
            model: model.to_string(),
        }
    }
}

/// Why an image could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// The server refused the credentials (HTTP 401 or 403).
    #[error(
        "the judge at {endpoint} refused the credentials (HTTP {status}: {message}); check the \
         key in the environment variable judge.api_key_env names"
    )]
    Auth {
        /// The chat-completions URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The server's message (an excerpt).
        message: String,
    },
    /// The server rejected the request for good (a 4xx other than 401, 403,
    /// 408 and 429).
    #[error(
        "the judge at {endpoint} rejected the request (HTTP {status}: {body}); check \
         judge.model and judge.base_url"
    )]
    Rejected {
        /// The chat-completions URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// An excerpt of the response body.
        body: String,
    },
    /// The last answer held no valid score, after every try.
    #[error(
        "the judge's {aspect} answer is malformed after {attempts} attempt(s): {reason}: {excerpt}"
    )]
    Malformed {
        /// `semantic consistency` or `perceptual quality`.
        aspect: &'static str,
        /// Requests sent for it.
        attempts: u32,
        /// What is wrong with the last answer.
        reason: String,
        /// An excerpt of the last answer.
        excerpt: String,
    },
    /// The server could not be reached, or kept failing, after every try.
    #[error("the judge at {endpoint} failed {attempts} attempt(s): {message}")]
    Unavailable {
        /// The chat-completions URL.
        endpoint: String,
        /// Requests sent.
        attempts: u32,
        /// The last failure.
        message: String,
    },
    /// An image could not be decoded or re-encoded.
    #[error("the {which} image cannot be prepared for the judge: {message}")]
    Image {
        /// `source` or `edited`.
        which: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A judgement could not be appended to the cache file.
    #[error("appending to the judgement cache {}: {source}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The write error.
        source: std::io::Error,
    },
}

/// The two questions asked about every image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aspect {
    /// Source and edited image, and the instruction.
    Semantic,
    /// The edited image alone.
    Perceptual,
}

impl Aspect {
    fn name(self) -> &'static str {
        match self {
            Self::Semantic => "semantic consistency",
            Self::Perceptual => "perceptual quality",
        }
    }
}

/// The semantic-consistency prompt; `{instruction}` is replaced by the
/// instruction. The source and the edited image come before it.
const SEMANTIC_PROMPT: &str = r#"You are an expert judge of image edits. Two images come before this text. The FIRST is an original picture. The SECOND is what an image-editing model produced from it when given this instruction:

<instruction>
{instruction}
</instruction>

Compare the two pictures and give two scores, each a number from 0 to 10:
1. followed: how completely and correctly the SECOND picture carries out the instruction. 10 = everything asked for is there, done as asked; 5 = done in part, or done in the wrong place or the wrong way; 0 = the instruction was ignored.
2. not_over_edited: how well the SECOND picture keeps everything the instruction did not ask to change (the other objects and people, the background, the layout, the colours, the style). 10 = nothing else changed; 5 = clear changes nobody asked for; 0 = it has become a different picture.

Judge only what you see. Reply with ONLY this JSON object, with no other text before or after it:
{"score": [<followed>, <not_over_edited>], "reasoning": "<one or two sentences>"}"#;

/// The perceptual-quality prompt. The edited image comes before it.
const PERCEPTUAL_PROMPT: &str = r#"You are an expert judge of image quality. The picture before this text was created or edited by an image model. Judge how it looks, not what it shows, and give two scores, each a number from 0 to 10:
1. natural: how natural and believable it looks: lighting and shadows, perspective, proportions, and a consistent scene (or a consistent style, for a drawing or painting). 10 = entirely natural; 5 = noticeably off; 0 = clearly wrong or fake.
2. artifact_free: how free it is of artifacts: distortion, blur, noise, smears, broken edges, malformed faces, hands or text, visible seams around an edited area. 10 = no artifacts at all; 5 = some visible artifacts; 0 = artifacts everywhere.

Reply with ONLY this JSON object, with no other text before or after it:
{"score": [<natural>, <artifact_free>], "reasoning": "<one or two sentences>"}"#;

/// A valid answer: two scores, 0 to 10, and the reasoning.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    score: [f64; 2],
    reasoning: String,
}

/// How one HTTP attempt ended, when it gave no usable answer.
enum Miss {
    /// Final: no retry helps.
    Fatal(JudgeError),
    /// Worth another try after the backoff (or the server's `Retry-After`).
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The model's answer is unusable; asked again at once.
    Malformed { reason: String, answer: String },
}

/// One line of the cache file.
#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    judgement: Judgement,
}

/// The judgements known, and the cache file new ones are appended to.
struct Cache {
    entries: HashMap<String, Judgement>,
    file: File,
}

/// A judge model behind an OpenAI-compatible chat-completions API, with its
/// judgement cache. `judge` may be called concurrently.
pub struct Judge {
    model: String,
    endpoint: String,
    api_key: Option<String>,
    client: reqwest::Client,
    max_retries: u32,
    max_image_edge: u32,
    temperature: f64,
    cache_path: PathBuf,
    cache: Mutex<Cache>,
    requests: AtomicU64,
    hits: AtomicUsize,
}

// Hand-written: the API key must never reach logs, and the cache is long.
impl fmt::Debug for Judge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Judge {{ model: {:?}, endpoint: {:?}, cache: {:?}, .. }}",
            self.model, self.endpoint, self.cache_path
        )
    }
}

impl Judge {
    /// Checks `config`, reads the API key from the environment variable
    /// `api_key_env` names (which must be set and non-empty), and opens the
    /// cache at `cache_path` (created if missing; its judgements loaded if
    /// not). A torn last line, left by a crash in the middle of an append,
    /// is cut off; any other unreadable line is an error.
    pub fn new(config: JudgeConfig, cache_path: PathBuf) -> anyhow::Result<Judge> {
        let (base_url, model) = config.check()?;
        let api_key = match config.api_key_env.as_deref().map(str::trim) {
            None => None,
            Some("") => bail!("judge.api_key_env is empty"),
            Some(name) => match std::env::var(name) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => bail!(
                    "judge.api_key_env names the environment variable {name}, which is not \
                     set (or empty)"
                ),
            },
        };
        let timeout = Duration::from_secs(config.timeout_seconds);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .context("building the judge's HTTP client")?;
        let cache = open_cache(&cache_path)?;
        Ok(Judge {
            model,
            endpoint: format!(
                "{}/chat/completions",
                base_url.as_str().trim_end_matches('/')
            ),
            api_key,
            client,
            max_retries: config.max_retries,
            max_image_edge: config.max_image_edge,
            temperature: config.temperature,
            cache_path,
            cache: Mutex::new(cache),
            requests: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
        })
    }

    /// Judges `edited` (encoded image bytes, PNG or JPEG as fetched) as an
    /// edit of `source` following `instruction`. A judgement already in the
    /// cache is returned without any request; a new one is appended to the
    /// cache file before it is returned.
    pub async fn judge(
        &self,
        source: &[u8],
        edited: &[u8],
        instruction: &str,
    ) -> Result<Judgement, JudgeError> {
        let key = cache_key(&self.model, instruction, source, edited);
        if let Some(known) = self.lock_cache().entries.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(known.clone());
        }
        let (source_url, edited_url) = self.image_urls(source, edited).await?;
        let semantic = self.body(
            &[&source_url, &edited_url],
            SEMANTIC_PROMPT.replace("{instruction}", instruction.trim()),
        );
        let perceptual = self.body(&[&edited_url], PERCEPTUAL_PROMPT.to_string());
        let (semantic, perceptual) = tokio::try_join!(
            self.ask(&semantic, Aspect::Semantic),
            self.ask(&perceptual, Aspect::Perceptual)
        )?;
        let judgement = Judgement::of(&self.model, semantic, perceptual);
        self.remember(key, &judgement)?;
        Ok(judgement)
    }

    /// HTTP requests sent to the judge so far (every attempt counts).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Calls of [`judge`](Self::judge) answered from the cache, without a
    /// request, so far.
    pub fn cached(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves the map whole: keep going.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a new judgement to the cache and appends it to the file (unless
    /// a concurrent call of the same inputs got there first).
    fn remember(&self, key: String, judgement: &Judgement) -> Result<(), JudgeError> {
        let mut cache = self.lock_cache();
        if cache.entries.contains_key(&key) {
            return Ok(());
        }
        let line = CacheLine {
            key,
            judgement: judgement.clone(),
        };
        let mut text = serde_json::to_string(&line).expect("a judgement serializes");
        text.push('\n');
        cache.entries.insert(line.key, line.judgement);
        cache
            .file
            .write_all(text.as_bytes())
            .and_then(|()| cache.file.flush())
            .map_err(|source| JudgeError::Cache {
                path: self.cache_path.clone(),
                source,
            })
    }

    /// Both images as PNG data URLs, prepared off the async workers.
    async fn image_urls(
        &self,
        source: &[u8],
        edited: &[u8],
    ) -> Result<(String, String), JudgeError> {
        let (source, edited, edge) = (source.to_vec(), edited.to_vec(), self.max_image_edge);
        tokio::task::spawn_blocking(move || {
            Ok((
                png_data_url(&source, edge, "source")?,
                png_data_url(&edited, edge, "edited")?,
            ))
        })
        .await
        .map_err(|e| JudgeError::Image {
            which: "source or edited",
            message: format!("preparation panicked: {e}"),
        })?
    }

    /// A chat-completions body: one user message with `images` (data URLs)
    /// in order, then `prompt`.
    fn body(&self, images: &[&str], prompt: String) -> Value {
        let mut content: Vec<Value> = images
            .iter()
            .map(|url| json!({"type": "image_url", "image_url": {"url": url}}))
            .collect();
        content.push(json!({"type": "text", "text": prompt}));
        json!({
            "model": self.model,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": content}],
        })
    }

    /// Posts `body` until a valid answer comes back, a final error, or
    /// `max_retries` retries are spent.
    async fn ask(&self, body: &Value, aspect: Aspect) -> Result<Answer, JudgeError> {
        let attempts = self.max_retries.saturating_add(1);
        let mut backoff = BACKOFF_BASE;
        let mut attempt = 1;
        loop {
            let miss = match self.attempt(body).await {
                Ok(content) => match parse_answer(&content) {
                    Ok(answer) => return Ok(answer),
                    Err(reason) => Miss::Malformed {
                        reason,
                        answer: content,
                    },
                },
                Err(miss) => miss,
            };
            let delay = match miss {
                Miss::Fatal(error) => return Err(error),
                _ if attempt >= attempts => return Err(self.give_up(miss, aspect, attempt)),
                Miss::Malformed { .. } => Duration::ZERO,
                Miss::Transient { retry_after, .. } => {
                    let delay = retry_after.map_or(backoff, |asked| {
                        asked.clamp(backoff, RETRY_AFTER_MAX.max(backoff))
                    });
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    delay
                }
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The error for the last miss of `attempts`.
    fn give_up(&self, miss: Miss, aspect: Aspect, attempts: u32) -> JudgeError {
        match miss {
            Miss::Fatal(error) => error,
            Miss::Malformed { reason, answer } => JudgeError::Malformed {
                aspect: aspect.name(),
                attempts,
                reason,
                excerpt: excerpt(&answer),
            },
            Miss::Transient { message, .. } => JudgeError::Unavailable {
                endpoint: self.endpoint.clone(),
                attempts,
                message,
            },
        }
    }

    /// One request: the answer's text content, or why there is none.
    async fn attempt(&self, body: &Value) -> Result<String, Miss> {
        let mut request = self.client.post(&self.endpoint).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let transient = |message: String, retry_after| Miss::Transient {
            message,
            retry_after,
        };
        let response = request
            .send()
            .await
            .map_err(|e| transient(describe(&e), None))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| transient(format!("reading the response: {}", describe(&e)), None))?;
        if status.is_success() {
            return content_of(&text).ok_or_else(|| Miss::Malformed {
                reason: format!("HTTP {status} without choices[0].message.content"),
                answer: text,
            });
        }
        let body = if text.trim().is_empty() {
            "(empty body)".to_string()
        } else {
            excerpt(&text)
        };
        let status_code = status.as_u16();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Miss::Fatal(JudgeError::Auth {
                endpoint: self.endpoint.clone(),
                status: status_code,
                message: body,
            }),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                transient(format!("HTTP {status}: {body}"), retry_after)
            }
            _ if status.is_server_error() => {
                transient(format!("HTTP {status}: {body}"), retry_after)
            }
            _ => Miss::Fatal(JudgeError::Rejected {
                endpoint: self.endpoint.clone(),
                status: status_code,
                body,
            }),
        })
    }
}

/// A warning when the judge is the thinker's own model (compared without
/// case and without an `org/` prefix): it would grade its own critiques.
/// `None` when they differ or the thinker's model is unknown.
pub fn same_model_warning(judge_model: &str, thinker_model: Option<&str>) -> Option<String> {
    fn bare(model: &str) -> String {
        let model = model.trim();
        model.rsplit('/').next().unwrap_or(model).to_lowercase()
    }
    let thinker = thinker_model?;
    let judge = bare(judge_model);
    (!judge.is_empty() && judge == bare(thinker)).then(|| {
        format!(
            "the judge model {:?} is the thinker's model {:?}: it would grade its own \
             critiques and may favour them; use an independent judge (e.g. GPT-4.1 or \
             Qwen2.5-VL-72B) for numbers worth reporting",
            judge_model.trim(),
            thinker.trim()
        )
    })
}

/// The cache key of a question: hex SHA-256 of the model, the instruction
/// and both images, each prefixed with its length.
fn cache_key(model: &str, instruction: &str, source: &[u8], edited: &[u8]) -> String {
    let digest = [model.as_bytes(), instruction.as_bytes(), source, edited]
        .into_iter()
        .fold(Sha256::new(), |hash, part| {
            hash.chain_update((part.len() as u64).to_be_bytes())
                .chain_update(part)
        })
        .finalize();
    digest
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            hex.push_str(&format!("{byte:02x}"));
            hex
        })
}

/// Loads the cache file at `path` (created if missing) and opens it for
/// appending.
fn open_cache(path: &Path) -> anyhow::Result<Cache> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the judgement cache {}", path.display()))?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the judgement cache {}", path.display()))?;
    let mut entries = HashMap::new();
    let complete = text.rfind('\n').map_or(0, |end| end + 1);
    for (number, line) in text[..complete].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line: CacheLine = serde_json::from_str(line).with_context(|| {
            format!(
                "the judgement cache {} line {} is not a cached judgement",
                path.display(),
                number + 1
            )
        })?;
        entries.insert(line.key, line.judgement);
    }
    let tail = &text[complete..];
    if !tail.trim().is_empty() {
        match serde_json::from_str::<CacheLine>(tail) {
            // A whole last line without its newline: keep it, end it.
            Ok(line) => {
                entries.insert(line.key, line.judgement);
                file.write_all(b"\n")
            }
            // A crash in the middle of an append: drop the torn line.
            Err(_) => file.set_len(complete as u64),
        }
        .with_context(|| format!("repairing the judgement cache {}", path.display()))?;
    }
    Ok(Cache { entries, file })
}

/// `bytes` (an encoded image) as a `data:image/png;base64,` URL, scaled
/// down so its longer side is at most `max_edge`. A PNG that fits is sent
/// as it is.
fn png_data_url(bytes: &[u8], max_edge: u32, which: &'static str) -> Result<String, JudgeError> {
    let failed = |message: String| JudgeError::Image { which, message };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| failed(e.to_string()))
    };
    let format = reader()?.format();
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| failed(e.to_string()))?;
    let fits = width.max(height) <= max_edge;
    let png = if fits && format == Some(ImageFormat::Png) {
        bytes.to_vec()
    } else {
        let mut image = reader()?.decode().map_err(|e| failed(e.to_string()))?;
        if !fits {
            image = image.resize(max_edge, max_edge, image::imageops::FilterType::Lanczos3);
        }
        // PNG holds 8- and 16-bit pixels; anything else becomes 8-bit.
        let image = match image {
            DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
                DynamicImage::ImageRgba8(image.to_rgba8())
            }
            other => other,
        };
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|e| failed(format!("encoding PNG: {e}")))?;
        png
    };
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// `choices[0].message.content` of a chat-completions body; content given
/// as a list of text parts is joined.
fn content_of(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    match value.pointer("/choices/0/message/content")? {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

/// Reads an answer: the last JSON object in it with a `score` key (prose,
/// reasoning and code fences around it are skipped). `score` must be an
/// array of exactly two numbers (a string holding a number counts), each
/// finite and within 0 to 10; `reasoning` is its text (empty when absent).
/// The error says what is wrong.
fn parse_answer(content: &str) -> Result<Answer, String> {
    let object = content
        .rmatch_indices('{')
        .find_map(|(start, _)| {
            let mut values = serde_json::Deserializer::from_str(&content[start..]).into_iter();
            match values.next() {
                Some(Ok(Value::Object(o))) if o.contains_key("score") => Some(o),
                _ => None,
            }
        })
        .ok_or("no JSON object with a \"score\" key")?;
    let numbers = match &object["score"] {
        Value::Array(items) if items.len() == 2 => items,
        other => return Err(format!("\"score\" is {other}, not an array of two numbers")),
    };
    let mut score = [0.0; 2];
    for (slot, item) in score.iter_mut().zip(numbers) {
        // A number, or a string holding one.
        *slot = item
            .as_f64()
            .or_else(|| item.as_str().and_then(|text| text.trim().parse().ok()))
            .filter(|x: &f64| x.is_finite() && (0.0..=10.0).contains(x))
            .ok_or_else(|| format!("score {item} is not a number from 0 to 10"))?;
    }
    let reasoning = match object.get("reasoning") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.trim().to_string(),
        Some(other) => other.to_string(),
    };
    Ok(Answer { score, reasoning })
}

/// A `Retry-After` header in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// A reqwest error with its causes, for a message.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The start of `text` (trimmed), cut on a character boundary.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_found_and_validated() {
        let good =
            parse_answer("Sure.\n```json\n{\"score\": [7, \"8.5\"], \"reasoning\": \" ok \"}\n```")
                .unwrap();
        assert_eq!(good.score, [7.0, 8.5]);
        assert_eq!(good.reasoning, "ok");
        let nested = parse_answer(r#"{"outer": 1, "inner": {"score": [1, 2]}}"#).unwrap();
        assert_eq!(nested.score, [1.0, 2.0]);
        assert_eq!(nested.reasoning, "");
        for bad in [
            "",
            "no json",
            r#"{"reasoning": "x"}"#,
            r#"{"score": 5}"#,
            r#"{"score": [1]}"#,
            r#"{"score": [1, 2, 3]}"#,
            r#"{"score": [11, 2]}"#,
            r#"{"score": [-1, 2]}"#,
            r#"{"score": ["x", 2]}"#,
            r#"{"score": [null, 2]}"#,
        ] {
            assert!(parse_answer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_keys_are_length_prefixed() {
        let a = cache_key("m", "ab", b"c", b"");
        assert_ne!(a, cache_key("m", "a", b"bc", b""));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, cache_key("m", "ab", b"c", b""));
    }

    #[test]
    fn excerpts_are_cut_on_a_char_boundary() {
        let cut = excerpt(&"é".repeat(2 * EXCERPT_CHARS));
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt(" short "), "short");
    }
}
