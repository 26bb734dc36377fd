//! The `sandbox` thinker driving the real loop (`editthinker_core::run_loop`)
//! with an editor that paints a little more of the image each turn.

use std::sync::Mutex;

use async_trait::async_trait;
use editthinker_core::{
    run_loop, CritiqueRecord, EditRequest, Editor, EditorError, Image, JobOptions, LoopConfig,
    LoopJob, LoopOutcome, LoopParts, ObserverError, Progress, Protocol, Selection, StopReason,
    TurnObserver, TurnRecord,
};
use editthinker_thinker::sandbox::plateaus;
use editthinker_thinker::{build_thinker, ThinkerConfig, ThinkerKind};
use image::{DynamicImage, Rgb, RgbImage};
use serde_json::json;

const SAMPLES: [&str; 6] = [
    "paint the fence green",
    "give the man a beard",
    "erase the power lines",
    "make the scene look like a pencil sketch",
    "swap the mug for a glass of water",
    "light the room with warm lamps",
];

fn picture(painted_rows: u32) -> Image {
    let pixels = RgbImage::from_fn(64, 48, |x, y| {
        if y < painted_rows {
            Rgb([30, 200, 60])
        } else {
            Rgb([(x * 3) as u8, 90, 160])
        }
    });
    Image::from_pixels(&DynamicImage::ImageRgb8(pixels))
}

/// Paints `4 × turn` rows green; with `still`, returns the source as is.
struct Painter {
    still: bool,
    instructions: Mutex<Vec<String>>,
}

#[async_trait]
impl Editor for Painter {
    async fn edit(&self, r: EditRequest<'_>) -> Result<Image, EditorError> {
        self.instructions
            .lock()
            .unwrap()
            .push(r.instruction.to_string());
        Ok(if self.still {
            r.source.clone()
        } else {
            picture(4 * r.turn)
        })
    }
}

/// Keeps each turn's critique and the live text received for it.
#[derive(Default)]
struct Watch {
    critiques: Mutex<Vec<(u32, CritiqueRecord)>>,
    live: Mutex<Vec<(u32, String)>>,
}

impl Watch {
    fn live_text(&self, turn: u32) -> String {
        self.live
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == turn)
            .map(|(_, d)| d.as_str())
            .collect()
    }
}

#[async_trait]
impl TurnObserver for Watch {
    async fn turn_edited(&self, _: &TurnRecord) -> Result<(), ObserverError> {
        Ok(())
    }
    async fn turn_critiqued(&self, turn: u32, c: &CritiqueRecord) -> Result<(), ObserverError> {
        self.critiques.lock().unwrap().push((turn, c.clone()));
        Ok(())
    }
    fn thinking(&self, turn: u32, _candidate: u32, delta: &str) {
        self.live.lock().unwrap().push((turn, delta.to_string()));
    }
}

fn sandbox_config(protocol: &str) -> ThinkerConfig {
    let cfg: ThinkerConfig = serde_json::from_value(json!({
        "kind": "sandbox", "protocol": protocol, "token_interval_ms": 0
    }))
    .unwrap();
    assert_eq!(cfg.kind, ThinkerKind::Sandbox);
    cfg
}

async fn run(instruction: &str, protocol: &str, still: bool) -> (LoopOutcome, Watch, Vec<String>) {
    let thinker = build_thinker(&sandbox_config(protocol)).unwrap();
    let editor = Painter {
        still,
        instructions: Mutex::default(),
    };
    let watch = Watch::default();
    let source = picture(0);
    let options = JobOptions {
        max_turns: 5,
        selection: Selection::Best,
        ..JobOptions::default()
    };
    let outcome = run_loop(
        LoopJob {
            source: &source,
            instruction,
            options: &options,
            config: &LoopConfig::default(),
            progress: Progress::default(),
            spending: Default::default(),
            seed_base: 0,
        },
        LoopParts {
            editor: &editor,
            thinker: thinker.as_ref(),
            verifier: None,
            observer: &watch,
        },
    )
    .await
    .unwrap();
    let instructions = editor.instructions.into_inner().unwrap();
    (outcome, watch, instructions)
}

#[test]
fn the_samples_hold_both_kinds() {
    assert!(SAMPLES.iter().any(|s| plateaus(s)));
    assert!(SAMPLES.iter().any(|s| !plateaus(s)));
}

#[tokio::test]
async fn the_loop_is_satisfied_at_turn_three_or_four_in_both_protocols() {
    for protocol in ["editthinker", "expert"] {
        for instruction in SAMPLES {
            let (outcome, watch, instructions) = run(instruction, protocol, false).await;
            let expected = if plateaus(instruction) { 4 } else { 3 };
            assert_eq!(
                outcome.stop,
                StopReason::Satisfied,
                "{protocol} {instruction}"
            );
            assert_eq!(outcome.turns.len(), expected, "{protocol} {instruction}");
            assert_eq!(
                outcome.selected, expected as u32,
                "{protocol} {instruction}"
            );

            // Turn 1 used the user's words; every later turn a new refinement.
            assert_eq!(instructions[0], instruction);
            for pair in instructions.windows(2) {
                assert_ne!(pair[0], pair[1]);
                assert!(pair[1].starts_with(instruction), "{pair:?}");
            }

            let critiques = watch.critiques.lock().unwrap().clone();
            assert_eq!(critiques.len(), expected);
            for (turn, record) in &critiques {
                let parsed = record.critique.as_ref().expect("the answer parses");
                assert_eq!(record.attempts, 1);
                assert!(parsed.reasoning.starts_with("[sandbox] "));
                assert_eq!(record.satisfied, *turn as usize == expected, "turn {turn}");
                // The live text is exactly the stored answer.
                assert_eq!(watch.live_text(*turn), record.raw_output, "turn {turn}");
                if protocol == "editthinker" {
                    assert_eq!(
                        Protocol::Editthinker.parse(&record.raw_output).unwrap(),
                        *parsed
                    );
                    if plateaus(instruction) && *turn == 2 {
                        let first = critiques[0].1.critique.as_ref().unwrap();
                        let bump = parsed.semantic.unwrap() - first.semantic.unwrap();
                        assert!((bump - 0.1).abs() < 1e-9, "plateau bump {bump}");
                    }
                } else {
                    assert_eq!(parsed.semantic, None);
                    assert_eq!(parsed.is_satisfied, Some(*turn as usize == expected));
                }
            }
        }
    }
}

#[tokio::test]
async fn an_editor_that_changes_nothing_is_never_satisfied() {
    let (outcome, watch, instructions) = run(SAMPLES[0], "editthinker", true).await;
    assert_eq!(outcome.stop, StopReason::MaxTurns);
    assert_eq!(instructions.len(), 5);
    for (_, record) in watch.critiques.lock().unwrap().iter() {
        let parsed = record.critique.as_ref().unwrap();
        assert!(parsed.semantic.unwrap() <= 3.0, "{}", record.raw_output);
        assert!(parsed.reasoning.contains("nothing visibly changed"));
    }
}

#[tokio::test]
async fn two_runs_give_the_same_critiques() {
    let (_, first, _) = run(SAMPLES[1], "editthinker", false).await;
    let (_, second, _) = run(SAMPLES[1], "editthinker", false).await;
    let raw = |w: &Watch| -> Vec<String> {
        w.critiques
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.raw_output.clone())
            .collect()
    };
    assert_eq!(raw(&first), raw(&second));
}
