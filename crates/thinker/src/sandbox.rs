//! The `sandbox` thinker: a test mode that runs no model.
//!
//! Like a payment API's test mode, it lets the whole service run, live
//! reasoning included, with no network, GPU or weights. Its critiques are
//! made up but deterministic: the same instruction, turn and images always
//! give the same answer, and every answer starts with `[sandbox]` so nobody
//! takes it for a model's.
//!
//! What it looks at: the source and the edit, both shrunk to a
//! [`GRID`]×[`GRID`] grid, to see how much of the picture changed. An edit
//! with no visible change gets a semantic score of at most 3. Otherwise the
//! scores rise with the turn, and for about one instruction in four
//! ([`plateaus`]) they stall for a turn first, so that with the default
//! stop thresholds (both scores ≥ 8) an instruction is satisfied exactly at
//! turn 3, or at turn 4 when it plateaus. The exact rule is in
//! [`scores_in_tenths`].
//!
//! Every turn it rewrites the instruction: the user's instruction plus a
//! refinement sentence picked by the turn, never the previous instruction
//! unchanged (the loop would read that as "satisfied"). The answer follows
//! the configured [`Protocol`] and is streamed to the request's
//! [`ThinkingSink`](editthinker_core::ThinkingSink) a word at a time,
//! `token_interval` apart; the deltas put together are exactly the
//! returned answer.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use editthinker_core::imaging::off_thread;
use editthinker_core::{
    metrics, CritiqueRequest, Image, Protocol, Thinker, ThinkerAnswer, ThinkerError, Tokens,
};

/// Default delay between two streamed tokens, in milliseconds
/// (`thinker.token_interval_ms`).
pub const DEFAULT_TOKEN_INTERVAL_MS: u64 = 15;

/// Side, in cells, of the grid both images are shrunk to before they are
/// compared.
pub const GRID: u32 = 16;

/// A grid cell whose mean per-channel difference (0-255) is above this
/// counts as changed; an edit without a changed cell is "unchanged".
const CELL_CHANGED: f64 = 6.0;

/// The `thinker` label of the sandbox's critique metrics.
const THINKER_LABEL: &str = "sandbox";

/// Longest stretch of an instruction quoted in the reasoning, in characters.
const QUOTE_CHARS: usize = 160;

/// Refinement sentences, picked by turn (turn 1 takes the first).
const REFINEMENTS: [&str; 5] = [
    "Keep the main subject and the background exactly as they are.",
    "Make the requested change clearly visible rather than subtle.",
    "Match the lighting and colours of the rest of the photo.",
    "Leave every region the instruction does not mention untouched.",
    "Give the edited area crisp, natural-looking detail.",
];

/// The refinement asked for when the edit changed nothing.
const UNCHANGED_REFINEMENT: &str = "Apply the change so that it is plainly visible in the result.";

/// A thinker that simulates critiques (`kind = "sandbox"`): no network, no
/// model. See the [module documentation](self) for what it answers.
#[derive(Debug, Clone)]
pub struct SandboxThinker {
    protocol: Protocol,
    token_interval: Duration,
}

impl SandboxThinker {
    /// A sandbox thinker answering in `protocol`, streaming one token every
    /// `token_interval` (zero: no pause at all).
    pub fn new(protocol: Protocol, token_interval: Duration) -> Self {
        Self {
            protocol,
            token_interval,
        }
    }

    /// The delay between two streamed tokens.
    pub fn token_interval(&self) -> Duration {
        self.token_interval
    }
}

#[async_trait]
impl Thinker for SandboxThinker {
    fn protocol(&self) -> Protocol {
        self.protocol
    }

    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
        let started = Instant::now();
        // Decoding is CPU work: keep it off the async workers.
        let (source, edited) = (request.source.clone(), request.edited.clone());
        let change = off_thread(move || Change::measure(&source, &edited)).await?;
        let answer = answer(
            self.protocol,
            request.original_instruction,
            request.previous_instruction,
            request.turn,
            &change,
        );
        let pieces = tokens(&answer);
        for (i, token) in pieces.iter().enumerate() {
            if i > 0 && !self.token_interval.is_zero() {
                tokio::time::sleep(self.token_interval).await;
            }
            request.thinking.delta(token);
        }
        // Made-up but steady counts, so the usage ledger has something to
        // sum: a fixed share per image and a token per four prompt bytes.
        let prompt = request.original_instruction.len() + request.previous_instruction.len();
        let tokens = Tokens {
            input: SANDBOX_IMAGE_TOKENS * 2 + prompt as u64 / 4,
            output: pieces.len() as u64,
        };
        metrics::critique_done(
            THINKER_LABEL,
            started.elapsed(),
            Some((tokens.input, tokens.output)),
        );
        Ok(ThinkerAnswer {
            text: answer,
            tokens,
        })
    }

    async fn probe(&self) -> Result<(), ThinkerError> {
        Ok(())
    }
}

/// Prompt tokens the sandbox thinker counts per image.
const SANDBOX_IMAGE_TOKENS: u64 = 256;

/// Whether the sandbox's scores for `instruction` stall for a turn: turn 2
/// then scores only 0.1 above turn 1, and the instruction is satisfied (at
/// the default thresholds) at turn 4 instead of turn 3. True for about one
/// instruction in four, decided by a hash of the trimmed instruction, so
/// tests can pick instructions of either kind.
pub fn plateaus(instruction: &str) -> bool {
    fnv1a64(instruction.trim().as_bytes()) >> 62 == 0
}

/// The sandbox's `(semantic, quality)` scores in tenths (85 is 8.5) for the
/// user's `instruction` at `turn` (from 1; 0 counts as 1), given whether
/// the edit visibly changed the source.
///
/// With `h` the FNV-1a 64-bit hash of the trimmed instruction, the base
/// scores are semantic `50 + (h >> 8) % 8` (5.0 to 5.7) and quality
/// `65 + (h >> 24) % 4` (6.5 to 6.8). Each step adds 15 to semantic and 10
/// to quality, both capped at 96 (9.6). The step is `turn - 1`; for an
/// instruction that [`plateaus`] it is 0 at turns 1 and 2 (turn 2 adding 1
/// to both) and `turn - 2` after. An unchanged edit scores semantic
/// `15 + (h >> 8) % 8` (1.5 to 2.2) whatever the turn.
pub fn scores_in_tenths(instruction: &str, turn: u32, changed: bool) -> (u32, u32) {
    let h = fnv1a64(instruction.trim().as_bytes());
    let turn = turn.max(1);
    let semantic_base = 50 + ((h >> 8) % 8) as u32;
    let quality_base = 65 + ((h >> 24) % 4) as u32;
    let (step, bump) = match (plateaus(instruction), turn) {
        (true, 1) => (0, 0),
        (true, 2) => (0, 1),
        (true, t) => (t - 2, 0),
        (false, t) => (t - 1, 0),
    };
    let rise = |base: u32, per_step: u32| {
        base.saturating_add(step.saturating_mul(per_step))
            .saturating_add(bump)
            .min(96)
    };
    let quality = rise(quality_base, 10);
    let semantic = if changed {
        rise(semantic_base, 15)
    } else {
        semantic_base - 35
    };
    (semantic, quality)
}

/// FNV-1a, 64 bits: a small hash that is stable across builds and
/// platforms (unlike the standard library's `DefaultHasher`).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// How much an edit differs from its source, on the shrunk grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Change {
    /// Share of grid cells that changed, 0 to 1.
    share: f64,
}

impl Change {
    fn measure(source: &Image, edited: &Image) -> Result<Self, ThinkerError> {
        let shrink = |image: &Image, which: &str| {
            image
                .decode()
                .map(|pixels| pixels.thumbnail_exact(GRID, GRID).to_rgb8())
                .map_err(|e| ThinkerError::Invalid(format!("{which} image: {e}")))
        };
        let (a, b) = (shrink(source, "source")?, shrink(edited, "edited")?);
        let changed = a
            .pixels()
            .zip(b.pixels())
            .filter(|(p, q)| {
                let diff: u32 =
                    p.0.iter()
                        .zip(q.0)
                        .map(|(x, y)| u32::from(x.abs_diff(y)))
                        .sum();
                f64::from(diff) / 3.0 > CELL_CHANGED
            })
            .count();
        Ok(Self {
            share: changed as f64 / f64::from(GRID * GRID),
        })
    }

    fn visible(&self) -> bool {
        self.share > 0.0
    }
}

/// The whole answer in `protocol`'s form.
fn answer(
    protocol: Protocol,
    original: &str,
    previous: &str,
    turn: u32,
    change: &Change,
) -> String {
    let (semantic, quality) = scores_in_tenths(original, turn, change.visible());
    let good = semantic >= 80 && quality >= 80;
    let (refined, clause) = refine(original, previous, turn, change.visible());
    let (s, q) = (tenths(semantic), tenths(quality));

    let seen = if change.visible() {
        let percent = (change.share * 100.0).round().max(1.0);
        format!("about {percent}% of the picture changed")
    } else {
        "nothing visibly changed".to_string()
    };
    let verdict = if !change.visible() {
        "The instruction was not carried out."
    } else if good {
        "The change is there and the rest holds up: good enough."
    } else if plateaus(original) && turn == 2 {
        "Barely better than the last attempt; the change is still faint."
    } else {
        "The change shows but does not yet fully match the request."
    };
    let reasoning = format!(
        "[sandbox] Simulated critique (no model). Turn {turn}, instruction \"{}\". \
         Against the source, on a {GRID}x{GRID} grid, {seen}. {verdict} \
         Semantic {s}, quality {q}. Next: {clause}",
        quote(previous)
    );

    match protocol {
        Protocol::Editthinker => format!(
            "<think>{reasoning}</think>\n<score>{{\"semantic\": {s}, \"quality\": {q}}}</score>\n\
             <answer>{refined}</answer>"
        ),
        Protocol::Expert => format!(
            "{{\"is_satisfied\": {good}, \"reason\": {}, \"new_rewritten_prompt\": {}}}",
            json_string(&reasoning),
            json_string(&refined)
        ),
    }
}

/// The refined instruction and the sentence added to the user's: the one
/// for this turn, or the next when that would repeat `previous`.
fn refine(original: &str, previous: &str, turn: u32, changed: bool) -> (String, &'static str) {
    let base = original
        .trim()
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '.' | ',' | ';' | '!'));
    let first = (turn.max(1) as usize - 1) % REFINEMENTS.len();
    let unchanged = (!changed).then_some(UNCHANGED_REFINEMENT);
    let by_turn = (0..REFINEMENTS.len()).map(|i| REFINEMENTS[(first + i) % REFINEMENTS.len()]);
    let mut candidates = unchanged.into_iter().chain(by_turn).map(|clause| {
        let refined = if base.is_empty() {
            clause.to_string()
        } else {
            format!("{base}. {clause}")
        };
        (refined, clause)
    });
    let first_candidate = candidates.next().expect("there are refinements");
    if first_candidate.0 != previous.trim() {
        return first_candidate;
    }
    // Candidates are distinct, so the next one differs from `previous`.
    candidates.next().expect("there are several refinements")
}

/// `value` tenths as a decimal, e.g. `85` as `8.5`.
fn tenths(value: u32) -> String {
    format!("{}.{}", value / 10, value % 10)
}

/// An instruction as quoted in the reasoning: cut to [`QUOTE_CHARS`] and
/// without angle brackets, which could be mistaken for the answer's tags.
fn quote(instruction: &str) -> String {
    let text = instruction.trim();
    let mut out: String = text
        .chars()
        .take(QUOTE_CHARS)
        .map(|c| match c {
            '<' => '‹',
            '>' => '›',
            c => c,
        })
        .collect();
    if text.chars().count() > QUOTE_CHARS {
        out.push('…');
    }
    out
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// `text` cut into tokens the way a model streams them: each word with the
/// whitespace after it. Put together they are `text` again.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            out.push(&text[start..i]);
            start = i;
            after_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use editthinker_core::run::is_satisfied;
    use editthinker_core::{StopThresholds, ThinkingSink};
    use image::{DynamicImage, Rgb, RgbImage};

    use super::*;

    /// Instructions of both kinds (checked in `both_kinds_of_instruction_occur`).
    const SAMPLES: [&str; 10] = [
        "make the sky blue",
        "add a red hat to the dog",
        "remove the car in the background",
        "turn the photo into a watercolour painting",
        "replace the apple with an orange",
        "make it night time",
        "change the cat's fur to white",
        "put snow on the mountains",
        "make the woman smile",
        "add a rainbow over the lake",
    ];

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ThinkingSink for Recorder {
        fn delta(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_string());
        }
    }

    impl Recorder {
        fn deltas(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A source with a grey left half and a white right half.
    fn source() -> Image {
        picture(|x, _| {
            if x < 32 {
                [120, 120, 120]
            } else {
                [250, 250, 250]
            }
        })
    }

    /// The source with its top-left quarter painted red.
    fn edited() -> Image {
        picture(|x, y| match (x < 32, y < 32) {
            (true, true) => [220, 20, 20],
            (true, false) => [120, 120, 120],
            _ => [250, 250, 250],
        })
    }

    fn picture(colour: impl Fn(u32, u32) -> [u8; 3]) -> Image {
        let pixels = RgbImage::from_fn(64, 64, |x, y| Rgb(colour(x, y)));
        Image::from_pixels(&DynamicImage::ImageRgb8(pixels))
    }

    async fn ask(
        thinker: &SandboxThinker,
        source: &Image,
        edited: &Image,
        original: &str,
        previous: &str,
        turn: u32,
    ) -> (String, Vec<String>) {
        let sink = Recorder::default();
        let answer = thinker
            .critique(CritiqueRequest {
                source,
                edited,
                original_instruction: original,
                previous_instruction: previous,
                turn,
                history: &[],
                thinking: &sink,
            })
            .await
            .unwrap();
        // One generated token per streamed piece.
        assert_eq!(answer.tokens.output, sink.deltas().len() as u64);
        assert!(answer.tokens.input >= 2 * SANDBOX_IMAGE_TOKENS);
        (answer.text, sink.deltas())
    }

    fn quick(protocol: Protocol) -> SandboxThinker {
        SandboxThinker::new(protocol, Duration::ZERO)
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tokens_put_together_give_the_text_back() {
        for text in [
            "",
            "one",
            "  leading and trailing  ",
            "<think>a b</think>\n<score>{\"semantic\": 5.0}</score>\n<answer>x y.</answer>",
            "ünïcödé wörds\tand\n\nlines",
        ] {
            let tokens = tokens(text);
            assert_eq!(tokens.concat(), text);
            assert!(tokens.iter().all(|t| !t.is_empty()), "{tokens:?}");
        }
        assert_eq!(tokens("a bc  d"), vec!["a ", "bc  ", "d"]);
    }

    #[test]
    fn both_kinds_of_instruction_occur() {
        let kinds: Vec<bool> = SAMPLES.iter().map(|s| plateaus(s)).collect();
        assert!(kinds.contains(&true), "{kinds:?}");
        assert!(kinds.contains(&false), "{kinds:?}");
        // Surrounding whitespace does not change the kind.
        for s in SAMPLES {
            assert_eq!(plateaus(s), plateaus(&format!("  {s}\n")));
        }
    }

    /// The first turn whose scores pass the default thresholds.
    fn first_good_turn(instruction: &str) -> u32 {
        let stop = StopThresholds::default();
        (1..=10)
            .find(|&turn| {
                let (s, q) = scores_in_tenths(instruction, turn, true);
                f64::from(s) / 10.0 >= stop.semantic && f64::from(q) / 10.0 >= stop.quality
            })
            .expect("satisfied within ten turns")
    }

    #[test]
    fn scores_rise_and_satisfy_at_turn_three_or_four() {
        for instruction in SAMPLES {
            let expected = if plateaus(instruction) { 4 } else { 3 };
            assert_eq!(first_good_turn(instruction), expected, "{instruction}");
            let scores: Vec<(u32, u32)> = (1..=6)
                .map(|t| scores_in_tenths(instruction, t, true))
                .collect();
            for pair in scores.windows(2) {
                assert!(
                    pair[1].0 >= pair[0].0 && pair[1].1 >= pair[0].1,
                    "{scores:?}"
                );
            }
            let (s1, q1) = scores[0];
            assert!(
                (50..58).contains(&s1) && (65..69).contains(&q1),
                "{scores:?}"
            );
            if plateaus(instruction) {
                assert_eq!(scores[1], (s1 + 1, q1 + 1), "{instruction}: {scores:?}");
            } else {
                assert_eq!(scores[1], (s1 + 15, q1 + 10), "{instruction}: {scores:?}");
            }
            assert!(scores.iter().all(|&(s, q)| s <= 96 && q <= 96));
            assert_eq!(scores_in_tenths(instruction, 20, true), (96, 96));
        }
    }

    #[test]
    fn an_unchanged_edit_scores_three_or_less_at_any_turn() {
        for instruction in SAMPLES {
            for turn in 1..=6 {
                let (s, _) = scores_in_tenths(instruction, turn, false);
                assert!(s <= 30, "{instruction} turn {turn}: {s}");
            }
        }
    }

    #[tokio::test]
    async fn the_deltas_are_the_answer_and_it_parses_in_both_protocols() {
        const PREVIOUS: &str = "make the sky a deep blue and keep the clouds white";
        let (source, edited) = (source(), edited());
        for protocol in [Protocol::Editthinker, Protocol::Expert] {
            let thinker = quick(protocol);
            for turn in 1..=5 {
                let (answer, deltas) =
                    ask(&thinker, &source, &edited, SAMPLES[0], PREVIOUS, turn).await;
                assert!(deltas.len() > 20, "streamed word by word: {deltas:?}");
                assert_eq!(deltas.concat(), answer);
                let critique = protocol.parse(&answer).unwrap();
                assert!(critique.reasoning.starts_with("[sandbox] "), "{answer}");
                let words = critique.reasoning.split_whitespace().count();
                assert!((30..=60).contains(&words), "{words} words: {answer}");
                assert!(critique.reasoning.contains(&format!("Turn {turn}")));
                assert!(critique.reasoning.contains(&format!("\"{PREVIOUS}\"")));
                assert!(
                    critique.reasoning.contains("25% of the picture changed"),
                    "{answer}"
                );
                assert!(critique
                    .refined_instruction
                    .starts_with("make the sky blue. "));
                assert_ne!(critique.refined_instruction, PREVIOUS);
                match protocol {
                    Protocol::Editthinker => {
                        let (s, q) = scores_in_tenths(SAMPLES[0], turn, true);
                        assert_eq!(critique.semantic, Some(f64::from(s) / 10.0));
                        assert_eq!(critique.quality, Some(f64::from(q) / 10.0));
                    }
                    Protocol::Expert => {
                        let good = first_good_turn(SAMPLES[0]) <= turn;
                        assert_eq!(critique.is_satisfied, Some(good), "turn {turn}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn answers_are_deterministic() {
        let (source, edited) = (source(), edited());
        let thinker = quick(Protocol::Editthinker);
        let first = ask(&thinker, &source, &edited, SAMPLES[3], "p", 2).await;
        let second = ask(&thinker, &source, &edited, SAMPLES[3], "p", 2).await;
        assert_eq!(first, second);
        let other_turn = ask(&thinker, &source, &edited, SAMPLES[3], "p", 3).await;
        assert_ne!(first.0, other_turn.0);
    }

    #[tokio::test]
    async fn an_unchanged_image_is_called_out() {
        let source = source();
        // The same pixels in another encoding still count as unchanged.
        let jpeg = {
            let pixels = source.decode().unwrap();
            let mut bytes = Vec::new();
            pixels
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Jpeg,
                )
                .unwrap();
            Image::probe(bytes.into(), u64::MAX).unwrap()
        };
        for edited in [&source, &jpeg] {
            for turn in [1, 3, 5] {
                let thinker = quick(Protocol::Editthinker);
                let (answer, _) = ask(&thinker, &source, edited, SAMPLES[1], "x", turn).await;
                let critique = Protocol::Editthinker.parse(&answer).unwrap();
                assert!(critique.semantic.unwrap() <= 3.0, "{answer}");
                assert!(critique.reasoning.contains("nothing visibly changed"));
                assert!(
                    !is_satisfied(&critique, "x", &StopThresholds::default()),
                    "{answer}"
                );
                assert!(critique.refined_instruction.ends_with(UNCHANGED_REFINEMENT));
            }
        }
    }

    #[test]
    fn the_refinement_never_repeats_the_previous_instruction() {
        for instruction in SAMPLES {
            for turn in 1..=7 {
                for changed in [true, false] {
                    let (usual, _) = refine(instruction, instruction, turn, changed);
                    assert_ne!(usual, instruction);
                    assert!(usual.starts_with(instruction));
                    // A previous instruction that is exactly this turn's
                    // refinement gets another one.
                    let (other, _) = refine(instruction, &usual, turn, changed);
                    assert_ne!(other, usual);
                    assert!(other.starts_with(instruction));
                }
            }
        }
        let (trimmed, _) = refine("  make it red.  ", "", 1, true);
        assert_eq!(trimmed, format!("make it red. {}", REFINEMENTS[0]));
        assert_eq!(refine("", "", 2, true).0, REFINEMENTS[1]);
    }

    #[tokio::test]
    async fn instructions_with_quotes_and_tags_still_parse() {
        let (source, edited) = (source(), edited());
        let tricky = "write \"SALE\" on the <b>sign</b>\nand a backslash \\";
        for protocol in [Protocol::Editthinker, Protocol::Expert] {
            let (answer, _) =
                ask(&quick(protocol), &source, &edited, "make it pop", tricky, 1).await;
            let critique = protocol.parse(&answer).unwrap();
            assert!(critique.reasoning.starts_with("[sandbox] "));
            assert!(critique.refined_instruction.starts_with("make it pop. "));
        }
    }

    #[tokio::test]
    async fn tokens_are_paced_by_the_interval() {
        let (source, edited) = (source(), edited());
        let thinker = SandboxThinker::new(Protocol::Editthinker, Duration::from_millis(2));
        let started = Instant::now();
        let (_, deltas) = ask(&thinker, &source, &edited, SAMPLES[0], "p", 1).await;
        let least = Duration::from_millis(2) * (deltas.len() as u32 - 1);
        assert!(started.elapsed() >= least, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn undecodable_images_are_invalid() {
        let good = source();
        let bad = Image {
            bytes: bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really"),
            ..good.clone()
        };
        let thinker = quick(Protocol::Editthinker);
        let result = thinker
            .critique(CritiqueRequest {
                source: &good,
                edited: &bad,
                original_instruction: "x",
                previous_instruction: "x",
                turn: 1,
                history: &[],
                thinking: &editthinker_core::NoThinking,
            })
            .await;
        match result {
            Err(ThinkerError::Invalid(m)) => assert!(m.starts_with("edited image: "), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert_eq!(thinker.probe().await, Ok(()));
    }
}
