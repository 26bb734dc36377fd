//! The `local` thinker: EditThinker-8B (or any Qwen3-VL-family model)
//! running in-process on mistral.rs.
//!
//! The model is loaded once ([`LocalThinker::load`]) and shared by every
//! critique of the worker; concurrent critiques are batched by mistral.rs's
//! engine (up to `max_batch` sequences). Each critique streams its tokens to
//! the request's [`editthinker_core::ThinkingSink`], is bounded by a
//! timeout, and — unless switched off — is constrained by a grammar so the
//! answer always has the EditThinker form ([`grammar`]). Images are scaled
//! and padded first ([`images`]), so sizes the vision preprocessor would
//! panic on never reach it. An engine that dies anyway is detected, the
//! critique fails as transient, and the model is reloaded for the next one.

pub mod grammar;
pub mod images;
mod settings;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use editthinker_core::{
    CritiqueRequest, Image, Protocol, Thinker, ThinkerAnswer, ThinkerError, ThinkingSink, Tokens,
};
use image::DynamicImage;
use mistralrs::{
    Model, MultimodalModelBuilder, RequestBuilder, Response, SamplingParams, TextMessageRole,
    TokenSource,
};
use tokio::sync::Mutex;

use crate::config::ThinkerConfigError;

pub use settings::{LocalDType, LocalDevice, LocalSettings, DEFAULT_LOCAL_MODEL};

/// Token counts and speeds of one critique, from mistral.rs's usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CritiqueStats {
    /// Prompt tokens (text and image tokens).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt processing speed, tokens per second.
    pub prompt_tok_per_sec: f32,
    /// Generation speed, tokens per second.
    pub completion_tok_per_sec: f32,
}

/// The engine in use and how many times it was (re)loaded.
struct Slot {
    /// `None` after the engine was found dead: reloaded on the next call.
    model: Option<Arc<Model>>,
    /// Number of the current load, from 1.
    generation: u64,
}

/// A critique that went wrong, before it becomes a [`ThinkerError`].
#[derive(Debug)]
enum Failure {
    /// The engine died or dropped the request: reload it.
    Engine(String),
    /// The request itself was refused (e.g. the prompt is too long).
    Request(String),
    /// Generation failed but the engine is fine (e.g. a model error).
    Generation(String),
}

/// EditThinker on mistral.rs, in this process.
pub struct LocalThinker {
    settings: LocalSettings,
    slot: Mutex<Slot>,
    loads: AtomicU64,
    load_time: Duration,
}

impl std::fmt::Debug for LocalThinker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalThinker")
            .field("settings", &self.settings)
            .field("loads", &self.loads.load(Ordering::Relaxed))
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

impl LocalThinker {
    /// Loads the model (downloading it from the Hugging Face hub first when
    /// `settings.model` is not a local directory), then runs one tiny
    /// warm-up critique so that a model, tokenizer or grammar that cannot
    /// work fails here rather than on the first job. Errors name
    /// `thinker.model`.
    pub async fn load(settings: LocalSettings) -> Result<Self, ThinkerConfigError> {
        let started = Instant::now();
        tracing::info!(
            model = %settings.model,
            device = ?settings.device,
            dtype = ?settings.dtype,
            isq = settings.isq.as_deref().unwrap_or("none"),
            "loading thinker model"
        );
        let model = load_model(&settings).await.map_err(|e| {
            ThinkerConfigError::invalid(
                "thinker.model",
                format!("cannot load {:?}: {e:#}", settings.model),
            )
        })?;
        warm_up(&model, &settings).await.map_err(|e| {
            ThinkerConfigError::invalid(
                "thinker.model",
                format!(
                    "{:?} loaded but cannot answer a critique: {e}",
                    settings.model
                ),
            )
        })?;
        let load_time = started.elapsed();
        Ok(Self {
            settings,
            slot: Mutex::new(Slot {
                model: Some(Arc::new(model)),
                generation: 1,
            }),
            loads: AtomicU64::new(1),
            load_time,
        })
    }

    /// The settings this thinker runs with.
    pub fn settings(&self) -> &LocalSettings {
        &self.settings
    }

    /// How long the first load (with its warm-up) took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// How many times the model was loaded: 1, plus one per engine rebuild.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Like [`Thinker::critique`], and also returns the token statistics.
    pub async fn critique_with_stats(
        &self,
        request: CritiqueRequest<'_>,
    ) -> Result<(String, CritiqueStats), ThinkerError> {
        let max_edge = self.settings.max_image_edge;
        let started = Instant::now();
        let answer = self
            .critique_images(request, move |img| {
                images::prepare_for_qwen_vl(&img, max_edge)
            })
            .await;
        let tokens = answer
            .as_ref()
            .ok()
            .map(|(_, stats)| (stats.prompt_tokens as u64, stats.completion_tokens as u64));
        editthinker_core::metrics::critique_done("local", started.elapsed(), tokens);
        answer
    }

    /// For tests of the dead-engine path only: sends the images without
    /// scaling or padding, so an image the vision preprocessor cannot take
    /// crashes the request inside mistral.rs.
    #[cfg(feature = "test-support")]
    pub async fn critique_unprepared(
        &self,
        request: CritiqueRequest<'_>,
    ) -> Result<String, ThinkerError> {
        self.critique_images(request, |img| img)
            .await
            .map(|(text, _)| text)
    }

    async fn critique_images(
        &self,
        request: CritiqueRequest<'_>,
        prepare: impl Fn(DynamicImage) -> DynamicImage + Send + Sync + 'static,
    ) -> Result<(String, CritiqueStats), ThinkerError> {
        // Decoding and scaling are CPU work: keep them off the async workers.
        let (source, edited) = (request.source.clone(), request.edited.clone());
        let (source, edited) = tokio::task::spawn_blocking(move || {
            Ok::<_, ThinkerError>((
                prepare(decode(&source, "source")?),
                prepare(decode(&edited, "edited")?),
            ))
        })
        .await
        .map_err(|e| ThinkerError::Invalid(format!("image preparation panicked: {e}")))??;

        let text = self.settings.template.render_request(&request);
        let builder = self.request(text, vec![source, edited], self.settings.max_tokens);

        let (model, generation) = self.engine().await?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.settings.timeout,
            generate(&model, builder, request.thinking),
        )
        .await;
        drop(model);
        match outcome {
            Ok(Ok((text, stats))) => {
                tracing::debug!(
                    turn = request.turn,
                    ms = started.elapsed().as_millis() as u64,
                    prompt_tokens = stats.prompt_tokens,
                    completion_tokens = stats.completion_tokens,
                    completion_tok_per_sec = stats.completion_tok_per_sec,
                    "local critique done"
                );
                Ok((text, stats))
            }
            Err(_) => Err(ThinkerError::Transient(format!(
                "local thinker timed out after {} s (thinker.timeout_seconds)",
                self.settings.timeout.as_secs_f64()
            ))),
            Ok(Err(Failure::Engine(message))) => {
                tracing::error!(
                    turn = request.turn,
                    error = %message,
                    "thinker engine failed; it will be reloaded for the next critique"
                );
                self.discard(generation).await;
                Err(ThinkerError::Transient(format!(
                    "local thinker engine failed: {message}"
                )))
            }
            Ok(Err(Failure::Generation(message))) => Err(ThinkerError::Transient(format!(
                "local thinker generation failed: {message}"
            ))),
            Ok(Err(Failure::Request(message))) => Err(ThinkerError::Invalid(format!(
                "local thinker refused the request: {message}"
            ))),
        }
    }

    /// A chat request with the images, sampling settings and constraint.
    fn request(&self, text: String, images: Vec<DynamicImage>, max_tokens: u32) -> RequestBuilder {
        build_request(&self.settings, text, images, max_tokens)
    }

    /// The current engine, reloading it first if it was found dead.
    async fn engine(&self) -> Result<(Arc<Model>, u64), ThinkerError> {
        let mut slot = self.slot.lock().await;
        if let Some(model) = &slot.model {
            return Ok((model.clone(), slot.generation));
        }
        let started = Instant::now();
        tracing::warn!(model = %self.settings.model, "reloading the thinker model");
        let model = load_model(&self.settings)
            .await
            .map_err(|e| ThinkerError::Transient(format!("reloading the thinker model: {e:#}")))?;
        let model = Arc::new(model);
        slot.model = Some(model.clone());
        slot.generation += 1;
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            load_ms = started.elapsed().as_millis() as u64,
            generation = slot.generation,
            "thinker reloaded"
        );
        Ok((model, slot.generation))
    }

    /// Drops engine `generation` (if still current) so the next call reloads.
    async fn discard(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation {
            slot.model = None;
        }
    }
}

#[async_trait]
impl Thinker for LocalThinker {
    fn protocol(&self) -> Protocol {
        self.settings.protocol
    }

    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
        self.critique_with_stats(request)
            .await
            .map(|(text, stats)| ThinkerAnswer {
                text,
                tokens: Tokens {
                    input: stats.prompt_tokens as u64,
                    output: stats.completion_tokens as u64,
                },
            })
    }
}

/// Decodes one of the request's images.
fn decode(image: &Image, which: &str) -> Result<DynamicImage, ThinkerError> {
    image
        .decode()
        .map_err(|e| ThinkerError::Invalid(format!("{which} image: {e}")))
}

/// Builds the chat request: one user message with both images, then the text.
fn build_request(
    settings: &LocalSettings,
    text: String,
    images: Vec<DynamicImage>,
    max_tokens: u32,
) -> RequestBuilder {
    let mut builder = RequestBuilder::new().add_image_message(TextMessageRole::User, text, images);
    builder = match settings.temperature {
        Some(t) if t > 0.0 => builder.set_sampling(SamplingParams {
            temperature: Some(t),
            top_p: settings.top_p,
            max_len: Some(max_tokens as usize),
            ..SamplingParams::neutral()
        }),
        // Greedy. `set_deterministic_sampler` resets `max_len`, so it goes first.
        _ => builder
            .set_deterministic_sampler()
            .set_sampler_max_len(max_tokens as usize),
    };
    if settings.grammar {
        builder = builder.set_constraint(grammar::constraint(settings.protocol, max_tokens));
    }
    builder
}

/// Loads the model as `settings` say.
async fn load_model(settings: &LocalSettings) -> anyhow::Result<Model> {
    let local_dir = std::path::Path::new(&settings.model).is_dir();
    let mut builder = MultimodalModelBuilder::new(&settings.model)
        .with_dtype(settings.dtype.to_mistralrs())
        .with_max_num_seqs(settings.max_batch)
        .with_token_source(if local_dir {
            TokenSource::None
        } else {
            // HF_TOKEN / HF_HUB_TOKEN, else the token file of `hf auth login`.
            TokenSource::CacheToken
        });
    if let Some(revision) = &settings.revision {
        builder = builder.with_hf_revision(revision);
    }
    if settings.device == LocalDevice::Cpu {
        builder = builder.with_force_cpu();
    }
    if let Some(isq) = &settings.isq {
        let device = mistralrs::best_device(settings.device == LocalDevice::Cpu)?;
        let isq = mistralrs::parse_isq_value(isq, Some(&device)).map_err(anyhow::Error::msg)?;
        builder = builder.with_isq(isq);
    }
    builder.build().await
}

/// One short critique of two blank images with the real request settings
/// (grammar included) but a few tokens only.
async fn warm_up(model: &Model, settings: &LocalSettings) -> Result<(), String> {
    let blank = || DynamicImage::new_rgb8(images::MIN_SIDE, images::MIN_SIDE);
    let text = settings.template.render("warm-up", "warm-up");
    // The grammar still describes the full form (its caps come from the
    // configured max_tokens); only generation stops early.
    let mut builder = build_request(settings, text, vec![blank(), blank()], settings.max_tokens);
    builder = builder.set_sampler_max_len(2);
    // Not streamed: a non-streamed request always ends with a `Done`
    // response, so success is unambiguous.
    model
        .send_chat_request(builder)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Sends the request as a stream, forwards each piece of text to `sink`,
/// and returns the whole answer with its statistics.
async fn generate(
    model: &Model,
    builder: RequestBuilder,
    sink: &dyn ThinkingSink,
) -> Result<(String, CritiqueStats), Failure> {
    let mut stream = model
        .stream_chat_request(builder)
        .await
        .map_err(classify_sdk_error)?;
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut stats = CritiqueStats::default();
    let (mut finished, mut chunks) = (false, 0usize);
    while let Some(response) = stream.next().await {
        match response {
            Response::Chunk(chunk) => {
                chunks += 1;
                for choice in &chunk.choices {
                    if let Some(text) = &choice.delta.reasoning_content {
                        sink.delta(text);
                        reasoning.push_str(text);
                    }
                    if let Some(text) = &choice.delta.content {
                        sink.delta(text);
                        content.push_str(text);
                    }
                    finished |= choice.finish_reason.is_some();
                }
                if let Some(usage) = &chunk.usage {
                    stats = stats_from(usage);
                }
            }
            Response::Done(done) => {
                // Not sent for streamed requests today; handled all the same.
                if let Some(choice) = done.choices.first() {
                    content = choice.message.content.clone().unwrap_or_default();
                    reasoning = choice.message.reasoning_content.clone().unwrap_or_default();
                }
                stats = stats_from(&done.usage);
                finished = true;
            }
            Response::ModelError(message, _) => return Err(Failure::Generation(message)),
            Response::ValidationError(e) => return Err(Failure::Request(e.to_string())),
            Response::InternalError(e) => return Err(Failure::Engine(e.to_string())),
            _ => {}
        }
        if finished {
            break;
        }
    }
    // mistral.rs 0.8.1 ends a stream without a final chunk (and without
    // usage) when the last token completes no text, e.g. when `max_len`
    // cuts a multi-byte character. So only a stream that delivered nothing
    // at all tells of a dead engine or a crashed request (a preprocessor
    // panic closes the channel before the first token). Caveat: an answer
    // made only of bytes that never form UTF-8 text (random weights without
    // the grammar) also delivers nothing and is taken for an engine failure.
    if !finished && chunks == 0 {
        return Err(Failure::Engine(
            "the engine closed the stream without generating anything".into(),
        ));
    }
    // A chat template that knows think tags makes mistral.rs move the
    // reasoning out of the content: put it back in the EditThinker form.
    let answer = if reasoning.is_empty() {
        content
    } else {
        format!("<think>{reasoning}</think>{content}")
    };
    Ok((answer, stats))
}

fn stats_from(usage: &mistralrs::Usage) -> CritiqueStats {
    CritiqueStats {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        prompt_tok_per_sec: usage.avg_prompt_tok_per_sec,
        completion_tok_per_sec: usage.avg_compl_tok_per_sec,
    }
}

/// Sorts an error of the mistral.rs SDK.
fn classify_sdk_error(e: mistralrs::error::Error) -> Failure {
    use mistralrs::error::Error as E;
    match e {
        E::RequestValidation(m) => Failure::Request(m),
        E::ModelError { message, .. } => Failure::Generation(message),
        // Channels closed, engine gone or poisoned, unexpected responses.
        other => Failure::Engine(other.to_string()),
    }
}
