//! The `sandbox` kind: a test mode, like a payment API's. No network, no
//! GPU, no weights and no cost, so anyone can run the whole service, and
//! their own CI, against it.
//!
//! An edit tints the source toward a colour picked by a stable hash of the
//! instruction and the seed (the request's `EditRequest::seed` when it has
//! one, as each of a turn's several candidates does, else the profile's
//! `seed`), writes the instruction in a banner along the bottom and the
//! label `SANDBOX` at the top-left, so the output depends visibly on both
//! and is never taken for a real edit. The same source, instruction and
//! seed always give the same PNG bytes.
//!
//! Each edit takes `latency_ms`, and fails at configured rates the way a
//! paid provider does, so integrators can exercise their error handling:
//! refusals (`EditorError::Refused`), 429s (retried inside the call like a
//! provider's, with the profile's `max_retries` and `retry_base_ms`, then
//! `EditorError::Transient`) and timeouts after the request was sent
//! (`EditorError::Ambiguous`, without waiting `timeout_seconds`). The
//! outcome is drawn at random per attempt; only the image is deterministic.

use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditRequest, Editor, EditorError, Image};
use image::{DynamicImage, GenericImageView};
use rand::Rng;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{candidate_seed, HttpCaller};

/// How long a sandbox edit takes when a profile sets no `latency_ms`: about
/// a fast hosted model, so that progress events and SSE streams are seen
/// as they will be in production.
pub const DEFAULT_LATENCY_MS: u64 = 500;

/// The most `latency_ms` may be set to (one hour): longer is a typo.
pub const MAX_LATENCY_MS: u64 = 3_600_000;

/// The sum of the rates may exceed 1 by this much: `0.1 + 0.2 + 0.7` is
/// `1.0000000000000002` in floating point.
const RATE_SUM_SLACK: f64 = 1e-9;

/// Client of nothing: simulates an editor (see the module documentation).
#[derive(Debug)]
pub struct SandboxEditor {
    model: String,
    seed: i64,
    latency: Duration,
    rates: SandboxRates,
    /// Only quoted in the simulated timeout's message.
    timeout_seconds: f64,
    /// Gives the sandbox the real kinds' in-flight limit, retry policy,
    /// instruction cap, `editor.edit` span and metrics; its HTTP client is
    /// never used.
    caller: HttpCaller,
}

/// The probabilities of the simulated failures, each 0 to 1, together at
/// most 1; the rest of the attempts succeed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SandboxRates {
    /// `refusal_rate`: refused as if by moderation.
    pub refusal: f64,
    /// `rate_limit_rate`: answered 429 Too Many Requests.
    pub rate_limit: f64,
    /// `timeout_rate`: timed out after the request was sent.
    pub timeout: f64,
}

/// What one simulated attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOutcome {
    /// The edit succeeds.
    Edited,
    /// A moderation refusal.
    Refused,
    /// 429 Too Many Requests: retried.
    RateLimited,
    /// Sent, then no answer in time: the outcome is unknown.
    TimedOut,
}

impl SandboxRates {
    /// The outcome of an attempt whose uniform draw in `[0, 1)` is `draw`:
    /// the rates are consecutive slices of that interval.
    pub fn outcome(&self, draw: f64) -> SandboxOutcome {
        if draw < self.refusal {
            SandboxOutcome::Refused
        } else if draw < self.refusal + self.rate_limit {
            SandboxOutcome::RateLimited
        } else if draw < self.refusal + self.rate_limit + self.timeout {
            SandboxOutcome::TimedOut
        } else {
            SandboxOutcome::Edited
        }
    }
}

impl SandboxEditor {
    /// Builds the simulator for profile `name`, validating its settings: each
    /// rate between 0 and 1 and their sum at most 1, `latency_ms` at most
    /// [`MAX_LATENCY_MS`], and the common limits; errors name
    /// `editors.<name>.<field>`.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        profile.check_settings_apply(name)?;
        let mut sum = 0.0;
        let mut rate = |field: &str, value: Option<f64>| {
            let value = value.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&value) {
                return Err(EditorConfigError::invalid(
                    name,
                    field,
                    format!("{value}: must be between 0 and 1"),
                ));
            }
            sum += value;
            if sum > 1.0 + RATE_SUM_SLACK {
                return Err(EditorConfigError::invalid(
                    name,
                    field,
                    format!(
                        "{value} brings refusal_rate + rate_limit_rate + timeout_rate to {sum}: \
                         together they must be at most 1"
                    ),
                ));
            }
            Ok(value)
        };
        let rates = SandboxRates {
            refusal: rate("refusal_rate", profile.refusal_rate)?,
            rate_limit: rate("rate_limit_rate", profile.rate_limit_rate)?,
            timeout: rate("timeout_rate", profile.timeout_rate)?,
        };
        let latency_ms = profile.latency_ms.unwrap_or(DEFAULT_LATENCY_MS);
        if latency_ms > MAX_LATENCY_MS {
            return Err(EditorConfigError::invalid(
                name,
                "latency_ms",
                format!("{latency_ms}: must be at most {MAX_LATENCY_MS} (one hour)"),
            ));
        }
        Ok(Self {
            model: profile.effective_model().unwrap_or_default(),
            seed: profile.seed.unwrap_or(0),
            latency: Duration::from_millis(latency_ms),
            rates,
            timeout_seconds: profile.timeout_seconds,
            caller: HttpCaller::from_profile(name, profile)?,
        })
    }

    /// The configured failure rates.
    pub fn rates(&self) -> SandboxRates {
        self.rates
    }

    /// How long each edit takes.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Plays one call's attempts, each outcome from `draw` (uniform in
    /// `[0, 1)`): 429s are retried with the profile's backoff until
    /// `max_retries` runs out; the other outcomes take the latency and end
    /// the call. `Ok` means the edit goes ahead.
    async fn simulate(&self, mut draw: impl FnMut() -> f64 + Send) -> Result<(), EditorError> {
        let policy = self.caller.retry_policy();
        let mut retry = 0;
        loop {
            let outcome = self.rates.outcome(draw());
            if outcome == SandboxOutcome::RateLimited {
                // A real 429 comes back before any work: no latency.
                retry += 1;
                if !policy.allows(retry) {
                    return Err(EditorError::Transient(format!(
                        "sandbox: simulated 429 Too Many Requests (rate_limit_rate = {}), \
                         still after {} retries",
                        self.rates.rate_limit, policy.max_retries
                    )));
                }
                let delay = policy.backoff(retry);
                tracing::warn!(?delay, "sandbox: simulated 429; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            tokio::time::sleep(self.latency).await;
            return match outcome {
                SandboxOutcome::Refused => Err(EditorError::Refused(format!(
                    "sandbox: simulated refusal (refusal_rate = {})",
                    self.rates.refusal
                ))),
                SandboxOutcome::TimedOut => Err(EditorError::Ambiguous(format!(
                    "sandbox: simulated timeout after the request was sent (timeout_rate = {}; \
                     a real provider would have been waited on for timeout_seconds = {})",
                    self.rates.timeout, self.timeout_seconds
                ))),
                SandboxOutcome::Edited | SandboxOutcome::RateLimited => Ok(()),
            };
        }
    }
}

#[async_trait]
impl Editor for SandboxEditor {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.caller
            .run_edit(Some(&self.model), request.turn, async {
                // `thread_rng` is made inside the closure: it is not `Send`
                // and must not live across the sleeps.
                self.simulate(|| rand::thread_rng().gen::<f64>()).await?;
                let source = request.source.clone();
                let instruction = request.instruction.to_owned();
                // A candidate's own seed replaces the profile's, so the
                // candidates of one turn get distinct tints.
                let seed = candidate_seed(&request).unwrap_or(self.seed);
                off_thread(move || render(&source, &instruction, seed)).await
            })
            .await
    }

    fn max_instruction_chars(&self) -> usize {
        self.caller.max_instruction_chars()
    }

    /// Always ready: there is nothing to reach.
    async fn probe(&self) -> Option<Result<(), EditorError>> {
        Some(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// Pixels: pure functions of (source, instruction, seed).

/// How far the image moves toward the tint colour, in percent: visible,
/// while the source stays recognisable.
const TINT_PERCENT: u32 = 35;
/// The banner's background and the instruction's colour.
const BANNER: [u8; 3] = [20, 20, 20];
const TEXT: [u8; 3] = [255, 255, 255];
/// The label's background and colour: a warning, unlike any real edit.
const LABEL_BACKGROUND: [u8; 3] = [0, 0, 0];
const LABEL_TEXT: [u8; 3] = [255, 210, 0];
const LABEL: &str = "SANDBOX";
/// Lines of instruction at most: a banner, not a page.
const MAX_LINES: usize = 3;

/// Decodes `source`, marks it for `instruction` and `seed`, and encodes the
/// result as PNG of the same size (RGBA when the source has alpha, else
/// RGB). CPU work: run it off the async threads.
fn render(source: &Image, instruction: &str, seed: i64) -> Result<Image, EditorError> {
    let pixels = source.decode().map_err(|e| {
        EditorError::Invalid(format!("sandbox: the source image cannot be decoded: {e}"))
    })?;
    let (width, height) = pixels.dimensions();
    let tint = tint_colour(hash(instruction, seed));
    let marked = if pixels.color().has_alpha() {
        let mut buf = pixels.into_rgba8();
        mark(&mut buf, 4, width, height, instruction, tint);
        DynamicImage::ImageRgba8(buf)
    } else {
        let mut buf = pixels.into_rgb8();
        mark(&mut buf, 3, width, height, instruction, tint);
        DynamicImage::ImageRgb8(buf)
    };
    Ok(Image::from_pixels(&marked))
}

/// FNV-1a, 64 bits, of the instruction, a separator and the seed. Written
/// here because std's `DefaultHasher` may change between Rust releases,
/// and the output must not.
fn hash(instruction: &str, seed: i64) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // 0xff never occurs in UTF-8, so ("a", s) and ("a\u{..}", t) cannot
    // feed the same bytes.
    instruction
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(&seed.to_le_bytes())
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A saturated colour (never grey, so the tint always shows) on a hue
/// wheel of 1536 steps picked by the hash's high bits.
fn tint_colour(hash: u64) -> [u8; 3] {
    const HI: u32 = 235;
    const LO: u32 = 40;
    let hue = ((hash >> 32) % 1536) as u32;
    let f = hue % 256;
    let up = (LO + (HI - LO) * f / 255) as u8;
    let down = (HI - (HI - LO) * f / 255) as u8;
    let (hi, lo) = (HI as u8, LO as u8);
    match hue / 256 {
        0 => [hi, up, lo],
        1 => [down, hi, lo],
        2 => [lo, hi, up],
        3 => [lo, down, hi],
        4 => [up, lo, hi],
        _ => [hi, lo, down],
    }
}

/// Tints the whole image, then draws the banner and the label, on a packed
/// buffer of `channels` (3 or 4) bytes a pixel.
fn mark(
    buf: &mut [u8],
    channels: usize,
    width: u32,
    height: u32,
    instruction: &str,
    tint: [u8; 3],
) {
    let mut canvas = Canvas {
        buf,
        channels,
        width,
        height,
    };
    canvas.tint(tint, TINT_PERCENT);
    let layout = Layout::new(width, height, instruction);
    let s = layout.scale;
    canvas.fill(
        0,
        layout.banner_top,
        width,
        height - layout.banner_top,
        BANNER,
    );
    for (i, line) in layout.lines.iter().enumerate() {
        let y = layout.banner_top + layout.pad + i as u32 * layout.line_height;
        canvas.text(layout.pad, y, line, s, TEXT);
    }
    let label: Vec<char> = LABEL.chars().collect();
    let label_width = layout.pad * 2 + text_width(label.len(), s);
    canvas.fill(0, 0, label_width, layout.label_height, LABEL_BACKGROUND);
    canvas.text(layout.pad, layout.pad, &label, s, LABEL_TEXT);
}

/// A pixel buffer that clips every drawing to its bounds.
struct Canvas<'a> {
    buf: &'a mut [u8],
    channels: usize,
    width: u32,
    height: u32,
}

impl Canvas<'_> {
    /// Moves every pixel `percent` of the way toward `colour`, rounding to
    /// nearest; alpha is kept.
    fn tint(&mut self, colour: [u8; 3], percent: u32) {
        for px in self.buf.chunks_exact_mut(self.channels) {
            for (c, &t) in px.iter_mut().zip(&colour) {
                *c = ((u32::from(*c) * (100 - percent) + u32::from(t) * percent + 50) / 100) as u8;
            }
        }
    }

    /// Fills the rectangle at (`x`, `y`) of `w`×`h`, clipped, opaque.
    fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, colour: [u8; 3]) {
        let x_end = x.saturating_add(w).min(self.width);
        let y_end = y.saturating_add(h).min(self.height);
        if x >= x_end || y >= y_end {
            return;
        }
        let stride = self.width as usize * self.channels;
        for row in y..y_end {
            let start = row as usize * stride + x as usize * self.channels;
            let end = row as usize * stride + x_end as usize * self.channels;
            for px in self.buf[start..end].chunks_exact_mut(self.channels) {
                px[..3].copy_from_slice(&colour);
                if self.channels == 4 {
                    px[3] = 255;
                }
            }
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font pixel
    /// a `scale`×`scale` square; whatever falls outside is clipped.
    fn text(&mut self, x: u32, y: u32, text: &[char], scale: u32, colour: [u8; 3]) {
        let advance = GLYPH_ADVANCE * scale;
        for (i, &c) in text.iter().enumerate() {
            let gx = x.saturating_add((i as u32).saturating_mul(advance));
            if gx >= self.width {
                break;
            }
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_WIDTH {
                    if bits & (1 << (GLYPH_WIDTH - 1 - col)) != 0 {
                        self.fill(
                            gx + col * scale,
                            y.saturating_add(row as u32 * scale),
                            scale,
                            scale,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// Where the banner and the label go on a `width`×`height` image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// Size of one font pixel: 1 up to 127 px on the shorter side, 4 at
    /// 512 px, at most 8.
    scale: u32,
    /// Margin around text.
    pad: u32,
    /// Distance between two lines' tops.
    line_height: u32,
    /// First row of the banner.
    banner_top: u32,
    /// Height of the label's box.
    label_height: u32,
    /// The instruction, uppercased and wrapped.
    lines: Vec<Vec<char>>,
}

impl Layout {
    fn new(width: u32, height: u32, instruction: &str) -> Self {
        let scale = (width.min(height) / 128).clamp(1, 8);
        let pad = 2 * scale;
        let line_height = (GLYPH_HEIGHT + 2) * scale;
        let glyph_height = GLYPH_HEIGHT * scale;
        let per_line = ((width.saturating_sub(2 * pad)) / (GLYPH_ADVANCE * scale)).max(1) as usize;
        // The banner takes at most about a third of the image, but always
        // one line: on a tiny image it is clipped rather than left out.
        let fit = (height / 3).saturating_sub(2 * pad + glyph_height) / line_height + 1;
        let max_lines = (fit as usize).clamp(1, MAX_LINES);
        let lines = wrap(instruction, per_line, max_lines);
        let text_height = (lines.len().max(1) as u32 - 1) * line_height + glyph_height;
        let banner_height = (2 * pad + text_height).min(height);
        Self {
            scale,
            pad,
            line_height,
            banner_top: height - banner_height,
            label_height: 2 * pad + glyph_height,
            lines,
        }
    }
}

/// Width in pixels of `chars` characters of text at `scale`, without the
/// trailing space.
fn text_width(chars: usize, scale: u32) -> u32 {
    (chars as u32)
        .saturating_mul(GLYPH_ADVANCE * scale)
        .saturating_sub(scale)
}

/// Uppercases `text` and wraps it greedily at spaces into lines of at most
/// `per_line` characters (longer words are split), at most `max_lines` of
/// them; cut text ends with `...`.
fn wrap(text: &str, per_line: usize, max_lines: usize) -> Vec<Vec<char>> {
    let mut lines: Vec<Vec<char>> = Vec::new();
    let mut current: Vec<char> = Vec::new();
    let mut cut = false;
    'words: for word in text.split_whitespace() {
        let word: Vec<char> = word.chars().map(|c| c.to_ascii_uppercase()).collect();
        for piece in word.chunks(per_line) {
            if current.is_empty() {
                current.extend_from_slice(piece);
            } else if current.len() + 1 + piece.len() <= per_line {
                current.push(' ');
                current.extend_from_slice(piece);
            } else {
                lines.push(std::mem::replace(&mut current, piece.to_vec()));
                if lines.len() == max_lines {
                    cut = true;
                    break 'words;
                }
            }
        }
    }
    if !cut && !current.is_empty() {
        lines.push(current);
    }
    if cut {
        let last = lines.last_mut().expect("cut only after a full line");
        let keep = per_line.saturating_sub(3);
        last.truncate(keep);
        while last.last() == Some(&' ') {
            last.pop();
        }
        last.extend("...".chars().take(per_line));
    }
    lines
}

// ---------------------------------------------------------------------------
// A 5×7 bitmap font of our own: A-Z, 0-9 and common punctuation.

const GLYPH_WIDTH: u32 = 5;
const GLYPH_HEIGHT: u32 = 7;
/// Glyph width plus one column of space.
const GLYPH_ADVANCE: u32 = GLYPH_WIDTH + 1;

/// The rows of `c`'s glyph, top first, the leftmost pixel in bit 4.
/// Lowercase letters are drawn as uppercase; a space is blank; any other
/// character is a hollow box, so that something shows where it was.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'D' => [0x1e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1e],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'Q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ' ' => [0; 7],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '?' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        '\'' => [0x0c, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '"' => [0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        ';' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '&' => [0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d],
        '+' => [0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00],
        '#' => [0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f],
        _ => [0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use editthinker_core::NoCheckpoint;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;
    use crate::config::EditorKind;

    /// A sandbox profile with no latency, so tests do not wait.
    fn profile() -> EditorProfile {
        EditorProfile {
            latency_ms: Some(0),
            ..EditorProfile::new(EditorKind::Sandbox)
        }
    }

    fn editor(p: &EditorProfile) -> SandboxEditor {
        SandboxEditor::from_profile("s", p).unwrap()
    }

    /// A gradient: no pixel of it is any of the drawing colours.
    fn source(w: u32, h: u32) -> Image {
        Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x % 200) as u8 + 20, (y % 200) as u8 + 20, 128])
        })))
    }

    async fn edit(e: &SandboxEditor, src: &Image, instruction: &str) -> Result<Image, EditorError> {
        edit_seeded(e, src, instruction, None).await
    }

    /// An edit as candidate 1 of a turn when `seed` is set.
    async fn edit_seeded(
        e: &SandboxEditor,
        src: &Image,
        instruction: &str,
        seed: Option<i64>,
    ) -> Result<Image, EditorError> {
        e.edit(EditRequest {
            source: src,
            instruction,
            turn: 1,
            candidate: u32::from(seed.is_some()),
            seed,
            resume: None,
            checkpoint: &NoCheckpoint,
        })
        .await
    }

    fn rgb(image: &Image) -> RgbImage {
        image.decode().unwrap().to_rgb8()
    }

    fn config_error(p: &EditorProfile) -> String {
        SandboxEditor::from_profile("s", p).unwrap_err().to_string()
    }

    #[tokio::test]
    async fn the_same_inputs_give_the_same_bytes_and_each_input_matters() {
        let src = source(96, 64);
        let e = editor(&profile());
        let a = edit(&e, &src, "make the sky purple").await.unwrap();
        let again = edit(&e, &src, "make the sky purple").await.unwrap();
        assert_eq!(a.bytes, again.bytes);
        let other_words = edit(&e, &src, "add a red hat").await.unwrap();
        assert_ne!(a.bytes, other_words.bytes);
        let seeded = editor(&EditorProfile {
            seed: Some(7),
            ..profile()
        });
        let other_seed = edit(&seeded, &src, "make the sky purple").await.unwrap();
        assert_ne!(a.bytes, other_seed.bytes);
        // A new editor from the same profile is as deterministic as one.
        let fresh = edit(&editor(&profile()), &src, "make the sky purple")
            .await
            .unwrap();
        assert_eq!(a.bytes, fresh.bytes);
    }

    #[tokio::test]
    async fn a_request_seed_replaces_the_profile_seed() {
        let src = source(96, 64);
        let e = editor(&EditorProfile {
            seed: Some(7),
            ..profile()
        });
        let sky = "make the sky purple";
        let one = edit_seeded(&e, &src, sky, Some(1_234_567)).await.unwrap();
        let again = edit_seeded(&e, &src, sky, Some(1_234_567)).await.unwrap();
        assert_eq!(one.bytes, again.bytes, "the same seed, the same bytes");
        let two = edit_seeded(&e, &src, sky, Some(7_654_321)).await.unwrap();
        assert_ne!(one.bytes, two.bytes, "two seeds, two images");
        let profile_seed = edit(&e, &src, sky).await.unwrap();
        assert_ne!(
            one.bytes, profile_seed.bytes,
            "the profile's seed is replaced"
        );
        // Replaced, not mixed in: a request seed of 7 is the profile's 7.
        let seven = edit_seeded(&e, &src, sky, Some(7)).await.unwrap();
        assert_eq!(seven.bytes, profile_seed.bytes);
        let unseeded = editor(&profile());
        let seven = edit_seeded(&unseeded, &src, sky, Some(7)).await.unwrap();
        assert_eq!(seven.bytes, profile_seed.bytes);
    }

    #[test]
    fn the_hash_is_fnv1a_and_stable() {
        // Published FNV-1a 64 test vectors (the empty input is the offset
        // basis): fixes the algorithm, so outputs survive Rust upgrades.
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        };
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
        let mut expected = b"x".to_vec();
        expected.push(0xff);
        expected.extend_from_slice(&3i64.to_le_bytes());
        assert_eq!(hash("x", 3), fnv(&expected));
        assert_ne!(hash("x", 3), hash("x", 4));
    }

    #[tokio::test]
    async fn the_output_has_the_source_size_a_banner_with_text_a_label_and_a_tint() {
        let src = source(512, 512);
        let instruction = "make the sky purple";
        let out = edit(&editor(&profile()), &src, instruction).await.unwrap();
        assert_eq!((out.width, out.height, out.format), (512, 512, src.format));
        assert_ne!(out.bytes, src.bytes);
        let (before, after) = (rgb(&src), rgb(&out));
        let layout = Layout::new(512, 512, instruction);
        assert_eq!(layout.scale, 4);
        assert_eq!(
            layout.lines,
            vec!["MAKE THE SKY PURPLE".chars().collect::<Vec<_>>()]
        );

        let count = |colour: [u8; 3], rows: std::ops::Range<u32>, cols: std::ops::Range<u32>| {
            rows.flat_map(|y| cols.clone().map(move |x| (x, y)))
                .filter(|&(x, y)| after.get_pixel(x, y).0 == colour)
                .count()
        };
        let banner = layout.banner_top..512;
        let text_pixels = count(TEXT, banner.clone(), 0..512);
        // 16 letters of 5×7 with ~15 pixels each, 16 image pixels a font pixel.
        assert!(text_pixels > 16 * 10 * 16, "{text_pixels} text pixels");
        assert!(
            count(BANNER, banner, 0..512) > text_pixels,
            "a solid banner"
        );
        assert_eq!(count(TEXT, 0..layout.banner_top, 0..512), 0);
        let label = count(LABEL_TEXT, 0..layout.label_height, 0..200);
        assert!(label > 7 * 10 * 16, "{label} label pixels");

        // Between the label and the banner, every pixel moved 35% toward
        // the tint colour, so the average did too.
        let tint = tint_colour(hash(instruction, 0));
        let middle = layout.label_height..layout.banner_top;
        let mean = |img: &RgbImage| {
            let mut sum = [0f64; 3];
            let mut n = 0f64;
            for y in middle.clone() {
                for x in 0..512 {
                    for (s, c) in sum.iter_mut().zip(img.get_pixel(x, y).0) {
                        *s += f64::from(c);
                    }
                    n += 1.0;
                }
            }
            sum.map(|s| s / n)
        };
        let (m0, m1) = (mean(&before), mean(&after));
        for c in 0..3 {
            let want = m0[c] + (f64::from(tint[c]) - m0[c]) * 0.35;
            assert!((m1[c] - want).abs() < 1.0, "channel {c}: {m1:?} vs {want}");
        }
        let moved: f64 = (0..3).map(|c| (m1[c] - m0[c]).abs()).sum();
        assert!(moved > 10.0, "the tint shows: {m0:?} -> {m1:?}");
    }

    #[tokio::test]
    async fn tiny_wide_and_transparent_sources_do_not_panic() {
        let e = editor(&profile());
        let long = "replace the background with a detailed watercolour painting of a harbour at dusk, keep the person unchanged ".repeat(20);
        for (w, h) in [(1, 1), (5, 40), (32, 32), (3000, 200), (200, 3000)] {
            for instruction in ["", "x", long.as_str(), "ünïcödé ✓ 文字"] {
                let out = edit(&e, &source(w, h), instruction).await.unwrap();
                assert_eq!((out.width, out.height), (w, h));
            }
        }
        let out = edit(&e, &source(32, 32), "hat").await.unwrap();
        let img = rgb(&out);
        assert!(img.pixels().any(|p| p.0 == TEXT), "one line fits at 32 px");
        let rgba = Image::from_pixels(&DynamicImage::ImageRgba8(RgbaImage::from_pixel(
            40,
            40,
            Rgba([10, 200, 30, 100]),
        )));
        let out = edit(&e, &rgba, "x").await.unwrap().decode().unwrap();
        assert!(out.color().has_alpha());
        let px = out.to_rgba8();
        assert_eq!(
            px.get_pixel(20, 20).0[3],
            100,
            "alpha is kept under the tint"
        );
        assert_eq!(px.get_pixel(20, 39).0[3], 255, "the banner is opaque");
    }

    #[test]
    fn wrapping_splits_long_words_and_cuts_with_an_ellipsis() {
        let s = |l: &[Vec<char>]| {
            l.iter()
                .map(|v| v.iter().collect())
                .collect::<Vec<String>>()
        };
        assert_eq!(s(&wrap("make it  so", 10, 3)), ["MAKE IT SO"]);
        assert_eq!(s(&wrap("make it so", 7, 3)), ["MAKE IT", "SO"]);
        assert_eq!(s(&wrap("abcdefghij", 4, 3)), ["ABCD", "EFGH", "IJ"]);
        assert_eq!(
            s(&wrap("one two three four five six", 9, 2)),
            ["ONE TWO", "THREE..."]
        );
        assert_eq!(s(&wrap("aaaa bbbb cccc", 2, 1)), [".."]);
        assert!(wrap("   ", 5, 3).is_empty());
        let many = wrap(&"word ".repeat(1000), 20, 3);
        assert_eq!(many.len(), 3);
        assert!(many.iter().all(|l| l.len() <= 20));
    }

    #[test]
    fn the_banner_has_at_most_three_lines_and_a_third_of_the_image() {
        let long = "word ".repeat(200);
        let big = Layout::new(512, 512, &long);
        assert_eq!(big.lines.len(), 3);
        assert!(512 - big.banner_top <= 512 / 3);
        let small = Layout::new(32, 32, &long);
        assert_eq!((small.scale, small.lines.len()), (1, 1));
    }

    #[test]
    fn glyphs_are_distinct_and_unknown_characters_are_boxes() {
        let known: Vec<char> = ('A'..='Z')
            .chain('0'..='9')
            .chain(".,!?-'\":;()/&+=#%_".chars())
            .collect();
        let distinct: HashSet<[u8; 7]> = known.iter().map(|&c| glyph(c)).collect();
        assert_eq!(distinct.len(), known.len(), "no two glyphs alike");
        assert!(
            !distinct.contains(&glyph('\u{1F600}')),
            "the box is no known glyph"
        );
        assert!(known.iter().all(|&c| glyph(c).iter().all(|row| *row < 32)));
        assert_eq!(glyph('q'), glyph('Q'));
        assert_eq!(glyph(' '), [0; 7]);
    }

    #[tokio::test]
    async fn each_rate_of_one_gives_its_error_class() {
        let e = editor(&EditorProfile {
            refusal_rate: Some(1.0),
            ..profile()
        });
        let err = edit(&e, &source(8, 8), "x").await.unwrap_err();
        assert!(
            matches!(&err, EditorError::Refused(m) if m.contains("sandbox: simulated refusal")),
            "{err:?}"
        );
        let e = editor(&EditorProfile {
            rate_limit_rate: Some(1.0),
            max_retries: 0,
            ..profile()
        });
        let err = edit(&e, &source(8, 8), "x").await.unwrap_err();
        assert!(
            matches!(&err, EditorError::Transient(m) if m.contains("sandbox: simulated 429")),
            "{err:?}"
        );
        let e = editor(&EditorProfile {
            timeout_rate: Some(1.0),
            timeout_seconds: 3600.0,
            ..profile()
        });
        let started = std::time::Instant::now();
        let err = edit(&e, &source(8, 8), "x").await.unwrap_err();
        assert!(
            matches!(&err, EditorError::Ambiguous(m) if m.contains("sandbox: simulated timeout")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no real wait");
    }

    #[tokio::test]
    async fn a_429_is_retried_max_retries_times_each_with_a_new_draw() {
        let e = editor(&EditorProfile {
            rate_limit_rate: Some(1.0),
            max_retries: 2,
            retry_base_ms: 1,
            ..profile()
        });
        let mut draws = 0;
        let err = e
            .simulate(|| {
                draws += 1;
                0.5
            })
            .await
            .unwrap_err();
        assert_eq!(draws, 3, "the first attempt and two retries");
        assert!(
            matches!(&err, EditorError::Transient(m) if m.contains("simulated") && m.contains("2 retries")),
            "{err:?}"
        );

        // A retry that draws a success ends the call well.
        let e = editor(&EditorProfile {
            rate_limit_rate: Some(0.5),
            max_retries: 2,
            retry_base_ms: 1,
            ..profile()
        });
        let mut script = [0.1, 0.9].into_iter();
        let mut draws = 0;
        e.simulate(|| {
            draws += 1;
            script.next().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(draws, 2);
    }

    #[test]
    fn rates_slice_the_unit_interval_in_order() {
        let r = SandboxRates {
            refusal: 0.1,
            rate_limit: 0.2,
            timeout: 0.3,
        };
        assert_eq!(r.outcome(0.05), SandboxOutcome::Refused);
        assert_eq!(r.outcome(0.15), SandboxOutcome::RateLimited);
        assert_eq!(r.outcome(0.45), SandboxOutcome::TimedOut);
        assert_eq!(r.outcome(0.65), SandboxOutcome::Edited);
        assert_eq!(SandboxRates::default().outcome(0.0), SandboxOutcome::Edited);
    }

    #[test]
    fn defaults_and_bad_settings() {
        let e = editor(&EditorProfile::new(EditorKind::Sandbox));
        assert_eq!(e.latency(), Duration::from_millis(DEFAULT_LATENCY_MS));
        assert_eq!(e.rates(), SandboxRates::default());
        assert_eq!(e.seed, 0);
        assert_eq!(e.model, "sandbox");
        assert_eq!(
            e.max_instruction_chars(),
            editthinker_core::DEFAULT_MAX_INSTRUCTION_CHARS
        );
        for (bad, key) in [
            (
                EditorProfile {
                    refusal_rate: Some(1.5),
                    ..profile()
                },
                "editors.s.refusal_rate: 1.5: must be between 0 and 1",
            ),
            (
                EditorProfile {
                    timeout_rate: Some(-0.1),
                    ..profile()
                },
                "editors.s.timeout_rate: ",
            ),
            (
                EditorProfile {
                    rate_limit_rate: Some(f64::NAN),
                    ..profile()
                },
                "editors.s.rate_limit_rate: ",
            ),
            (
                EditorProfile {
                    refusal_rate: Some(0.5),
                    rate_limit_rate: Some(0.3),
                    timeout_rate: Some(0.4),
                    ..profile()
                },
                "editors.s.timeout_rate: 0.4 brings",
            ),
            (
                EditorProfile {
                    latency_ms: Some(MAX_LATENCY_MS + 1),
                    ..profile()
                },
                "editors.s.latency_ms: ",
            ),
            (
                EditorProfile {
                    url: Some("http://h".into()),
                    ..profile()
                },
                "editors.s.url: not used by the sandbox kind (it calls no server)",
            ),
            (
                EditorProfile {
                    max_in_flight: Some(0),
                    ..profile()
                },
                "editors.s.max_in_flight: ",
            ),
        ] {
            let err = config_error(&bad);
            assert!(err.starts_with(key), "{err}");
        }
        // Rates that sum to 1 only up to rounding are fine.
        editor(&EditorProfile {
            refusal_rate: Some(0.1),
            rate_limit_rate: Some(0.2),
            timeout_rate: Some(0.7),
            ..profile()
        });
    }

    #[test]
    fn sandbox_settings_are_refused_on_other_kinds() {
        let p = EditorProfile {
            url: Some("http://h".into()),
            latency_ms: Some(10),
            ..EditorProfile::new(EditorKind::Http)
        };
        let err = crate::HttpEditor::from_profile("h", &p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "editors.h.latency_ms: not used by the http kind \
             (only the sandbox kind simulates latency and failures)"
        );
        let p = EditorProfile {
            url: Some("http://h".into()),
            refusal_rate: Some(0.1),
            ..EditorProfile::new(EditorKind::Http)
        };
        assert!(p
            .check_settings_apply("h")
            .unwrap_err()
            .to_string()
            .starts_with("editors.h.refusal_rate: not used by the http kind"));
    }

    #[tokio::test]
    async fn latency_is_waited_and_the_probe_answers() {
        let e = editor(&EditorProfile {
            latency_ms: Some(60),
            ..profile()
        });
        let started = std::time::Instant::now();
        edit(&e, &source(8, 8), "x").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(e.probe().await, Some(Ok(())));
    }
}
