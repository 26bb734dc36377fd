//! Drawing a job as it runs: one line per turn on stdout (index,
//! instruction, semantic and quality scores, overall), and on a terminal a
//! spinner with the elapsed time while the editor or thinker works, with
//! the thinker's reasoning streaming dimmed under the turn. A turn of
//! several candidates is printed once it has chosen one (`turn.chosen`):
//! its line (the chosen candidate's scores), then one compact line per
//! candidate, the chosen one starred; only candidate 0's reasoning streams
//! (the candidates are critiqued at once). Without a terminal (a pipe, a
//! file, CI) the same lines come out plain: no spinner, no control codes.
//! `NO_COLOR` turns colors off.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use console::style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::sse::Event;

/// Renders events as they come.
pub struct Watcher {
    spinner: Option<ProgressBar>,
    started: Instant,
    /// Reasoning text of the turn in progress not yet printed (a partial
    /// line).
    reasoning: String,
    /// The turn and candidate whose reasoning is streaming.
    reasoning_turn: Option<(u64, u64)>,
    /// The streaming turn's reasoning reached its `<score>`: the rest is
    /// what its turn line shows.
    reasoning_over: bool,
    /// Whether reasoning is shown (on a terminal).
    show_reasoning: bool,
    /// The instruction each turn was edited with (`turn.edited`), for its
    /// line once critiqued.
    instructions: HashMap<u64, String>,
    /// The job's `options.max_turns`, when known: no "editing turn N+1"
    /// after its last turn.
    max_turns: Option<u64>,
    /// The job's options, when known: how many candidates a turn edits.
    options: Value,
    /// Turns of several candidates not chosen yet: each edited candidate's
    /// `turn.critiqued` data (`null` until it is critiqued).
    pending: HashMap<u64, BTreeMap<u64, Value>>,
    /// The job as last read ([`Watcher::set_job`]): its candidates' seeds
    /// and verifier scores, which the events do not carry.
    job: Value,
}

impl Watcher {
    /// A watcher drawing on this process's terminal, if it has one.
    pub fn new() -> Self {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            console::set_colors_enabled(false);
            console::set_colors_enabled_stderr(false);
        }
        let tty = console::Term::stdout().is_term() && console::Term::stderr().is_term();
        let spinner = tty.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message("waiting for the job to start");
            bar
        });
        Self {
            spinner,
            started: Instant::now(),
            reasoning: String::new(),
            reasoning_turn: None,
            reasoning_over: false,
            show_reasoning: tty,
            instructions: Default::default(),
            max_turns: None,
            options: Value::Null,
            pending: Default::default(),
            job: Value::Null,
        }
    }

    /// The job as read from the API: its turn limit, its candidates per
    /// turn, and the seeds and scores of the candidates it has.
    pub fn set_job(&mut self, job: &Value) {
        self.set_max_turns(job["options"]["max_turns"].as_u64());
        self.options = job["options"].clone();
        self.job = job.clone();
    }

    /// Whether `event` chooses a turn whose candidates' seeds and verifier
    /// scores the job last read lacks (read the job again, then
    /// [`Watcher::set_job`]).
    pub fn needs_job(&self, event: &Event) -> bool {
        event.kind == "turn.chosen"
            && event.data["turn"].as_u64().is_some_and(|turn| {
                self.pending.contains_key(&turn) && job_turn(&self.job, turn).is_none()
            })
    }

    /// Whether `turn` has several candidates: the job's options say so, or
    /// one past the first was edited.
    fn several(&self, turn: u64, candidate: u64) -> bool {
        candidate > 0 || self.pending.contains_key(&turn) || candidates_for(&self.options, turn) > 1
    }

    /// The job's turn limit, for the status after each critique.
    pub fn set_max_turns(&mut self, max_turns: Option<u64>) {
        self.max_turns = max_turns;
    }

    /// What the job does after `turn` was critiqued with `critique`.
    fn after_critique(&self, turn: u64, critique: &serde_json::Value) -> String {
        let satisfied = critique["satisfied"].as_bool() == Some(true);
        let last = self.max_turns.is_some_and(|max| turn >= max);
        if satisfied || last {
            "finishing".into()
        } else {
            format!("editing turn {}", turn + 1)
        }
    }

    /// Prints a line above the spinner.
    pub fn line(&self, text: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.spinner {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn status(&self, message: String) {
        if let Some(bar) = &self.spinner {
            bar.set_message(message);
        }
    }

    /// Shows what one event means.
    pub fn on(&mut self, event: &Event) {
        let data = &event.data;
        let turn = data["turn"].as_u64();
        let candidate = data["candidate"].as_u64().unwrap_or(0);
        match event.kind.as_str() {
            "job.queued" => self.status("queued".into()),
            "job.started" => {
                let attempt = data["attempt"].as_u64().unwrap_or(1);
                if attempt > 1 {
                    self.line(&format!("attempt {attempt}"));
                }
                self.status("editing turn 1".into());
            }
            "job.retrying" => {
                self.flush_reasoning();
                self.line(&format!(
                    "{} ({}, {}): queued again",
                    style("retrying").yellow(),
                    data["reason"].as_str().unwrap_or("?"),
                    data["code"].as_str().unwrap_or("-")
                ));
                self.status("queued".into());
            }
            "turn.edited" => {
                if let (Some(turn), Some(instruction)) = (turn, data["instruction"].as_str()) {
                    self.instructions.insert(turn, instruction.to_string());
                }
                let turn = turn.unwrap_or(0);
                if self.several(turn, candidate) {
                    let pending = self.pending.entry(turn).or_default();
                    pending.entry(candidate).or_insert(Value::Null);
                    self.candidates_status(turn);
                } else {
                    self.status(format!("thinking about turn {turn}"));
                }
            }
            "turn.thinking" => {
                let turn = turn.unwrap_or(0);
                // Candidates are critiqued at once: only candidate 0's
                // reasoning streams, never several mixed.
                if let (0, Some(delta)) = (candidate, data["delta"].as_str()) {
                    let heading = if self.several(turn, candidate) {
                        format!("turn {turn} candidate 0 thinking:")
                    } else {
                        format!("turn {turn} thinking:")
                    };
                    self.reason((turn, candidate), heading, delta);
                }
            }
            "turn.critiqued" => {
                let turn = turn.unwrap_or(0);
                if self.reasoning_turn.is_none_or(|at| at == (turn, candidate)) {
                    self.flush_reasoning();
                }
                let mut data = data.clone();
                if let Some(instruction) = self.instructions.get(&turn) {
                    data["instruction"] = instruction.clone().into();
                }
                if self.several(turn, candidate) {
                    self.pending
                        .entry(turn)
                        .or_default()
                        .insert(candidate, data);
                    self.candidates_status(turn);
                    return;
                }
                self.line(&turn_line(&data));
                self.status(self.after_critique(turn, &data["critique"]));
            }
            "turn.chosen" => self.chosen(turn.unwrap_or(0), candidate),
            "job.succeeded" => self.status("done".into()),
            "job.failed" | "job.canceled" => {
                self.flush_reasoning();
            }
            _ => {}
        }
    }

    /// A turn of several candidates chose `chosen`: its line and its
    /// candidates' lines.
    fn chosen(&mut self, turn: u64, chosen: u64) {
        if self.reasoning_turn.is_some_and(|(t, _)| t == turn) {
            self.flush_reasoning();
        }
        let Some((lines, critique)) = self.chosen_lines(turn, chosen) else {
            return;
        };
        for line in lines {
            self.line(&line);
        }
        self.status(self.after_critique(turn, &critique));
    }

    /// The lines of a turn of several candidates that chose `chosen`: the
    /// turn's (the chosen candidate's scores), then one per candidate; and
    /// the chosen critique. `None` for a turn already printed as a
    /// one-candidate turn.
    fn chosen_lines(&mut self, turn: u64, chosen: u64) -> Option<(Vec<String>, Value)> {
        let critiqued = self.pending.remove(&turn)?;
        let mut data = critiqued
            .get(&chosen)
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| serde_json::json!({ "turn": turn }));
        if let Some(instruction) = self.instructions.get(&turn) {
            data["instruction"] = instruction.clone().into();
        }
        // The job's own view has the seeds and verifier scores; the events,
        // only the thinker's scores.
        let candidates = match job_turn(&self.job, turn) {
            Some(read) => read["candidates"].as_array().cloned().unwrap_or_default(),
            None => critiqued
                .iter()
                .map(|(index, c)| {
                    let (critique, verifier) = (&c["critique"], &c["verifier"]);
                    serde_json::json!({"index": index, "critique": critique, "verifier": verifier})
                })
                .collect(),
        };
        let mut lines = vec![turn_line(&data)];
        lines.extend(candidate_lines(&candidates, chosen));
        Some((lines, data["critique"].take()))
    }

    /// The spinner while a turn's candidates are edited and critiqued.
    fn candidates_status(&self, turn: u64) {
        let pending = self.pending.get(&turn);
        let edited = pending.map_or(0, BTreeMap::len);
        let critiqued = pending.map_or(0, |p| p.values().filter(|c| !c.is_null()).count());
        let wanted = candidates_for(&self.options, turn).max(edited as u64);
        self.status(format!(
            "turn {turn}: {edited} of {wanted} candidates edited, {critiqued} critiqued"
        ));
    }

    /// The connection dropped and is being resumed.
    pub fn reconnecting(&self) {
        self.status("connection lost; resuming".into());
    }

    /// Reasoning text: on a terminal, dimmed lines under the turn as they
    /// complete.
    fn reason(&mut self, at: (u64, u64), heading: String, delta: &str) {
        if !self.show_reasoning {
            return;
        }
        if self.reasoning_turn != Some(at) {
            self.flush_reasoning();
            self.reasoning_turn = Some(at);
            // A heading, so the reasoning reads as the turn's, above its
            // scores.
            self.line(&format!("{}", style(heading).dim()));
        }
        self.reasoning.push_str(delta);
        while let Some(end) = self.reasoning.find('\n') {
            let line: String = self.reasoning.drain(..=end).collect();
            self.reasoning_line(&line);
        }
    }

    /// Prints one complete line of reasoning as a person reads it.
    fn reasoning_line(&mut self, line: &str) {
        if self.reasoning_over {
            return;
        }
        let (text, over) = readable_reasoning(line);
        self.reasoning_over = over;
        if !text.is_empty() {
            self.line(&format!("    {}", style(text).dim()));
        }
    }

    fn flush_reasoning(&mut self) {
        let rest = std::mem::take(&mut self.reasoning);
        self.reasoning_line(&rest);
        self.reasoning_turn = None;
        self.reasoning_over = false;
    }

    /// Stops the spinner; the time since the watch began.
    pub fn finish(&mut self) -> Duration {
        self.flush_reasoning();
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
        }
        self.started.elapsed()
    }

    /// Pauses drawing around `f` (a prompt on the terminal).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.spinner {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new()
    }
}

/// A line of a thinker's raw answer as a person reads it: without the
/// `<think>` tags, and cut at `<score>`, after which come the scores and
/// the rewritten instruction that the turn line shows (`true`: the
/// reasoning is over).
pub fn readable_reasoning(line: &str) -> (String, bool) {
    let lower = line.to_ascii_lowercase();
    let (kept, over) = match lower.find("<score>") {
        // ASCII lowercasing keeps byte offsets.
        Some(at) => (&line[..at], true),
        None => (line, false),
    };
    let mut text = kept.to_string();
    for tag in ["<think>", "</think>"] {
        while let Some(at) = text.to_ascii_lowercase().find(tag) {
            text.replace_range(at..at + tag.len(), "");
        }
    }
    (text.trim().to_string(), over)
}

fn score(value: &Value) -> String {
    value
        .as_f64()
        .map(|v| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .unwrap_or_else(|| "-".into())
}

/// The line of a critiqued turn: `turn 2  semantic 8  quality 9  overall
/// 8.49  "the instruction"`, and what the thinker proposes next.
pub fn turn_line(data: &Value) -> String {
    let critique = &data["critique"];
    let mut line = format!(
        "turn {}  semantic {}  quality {}  overall {}",
        data["turn"].as_u64().unwrap_or(0),
        score(&critique["semantic"]),
        score(&critique["quality"]),
        style(score(&critique["overall"])).bold(),
    );
    if let Some(instruction) = data["instruction"].as_str() {
        line.push_str(&format!("  {instruction:?}"));
    }
    if critique["satisfied"].as_bool() == Some(true) {
        line.push_str(&format!("  {}", style("satisfied").green()));
    } else if let Some(next) = critique["refined_instruction"].as_str() {
        line.push_str(&format!("  -> {next:?}"));
    }
    if let Some(error) = critique["error"].as_str() {
        line.push_str(&format!("  ({error})"));
    }
    line
}

/// How many candidates turn `turn` edits under a job's `options`
/// (`first_turn_candidates` for turn 1, else `candidates`; 1 when unknown).
pub fn candidates_for(options: &Value, turn: u64) -> u64 {
    let first = options["first_turn_candidates"]
        .as_u64()
        .filter(|_| turn == 1);
    first
        .or_else(|| options["candidates"].as_u64())
        .unwrap_or(1)
}

/// Turn `turn` of a job's JSON, once it has chosen among several
/// candidates.
fn job_turn(job: &Value, turn: u64) -> Option<&Value> {
    job["turns"]
        .as_array()?
        .iter()
        .find(|t| t["index"].as_u64() == Some(turn))
        .filter(|t| t["candidates"].as_array().is_some_and(|c| c.len() > 1))
}

/// The compact lines of a turn's candidates (`turns[].candidates` of the
/// job JSON), the chosen one starred; none for a one-candidate turn.
pub fn candidate_lines(candidates: &[Value], chosen: u64) -> Vec<String> {
    if candidates.len() < 2 {
        return Vec::new();
    }
    candidates
        .iter()
        .map(|c| candidate_line(c, c["index"].as_u64() == Some(chosen)))
        .collect()
}

/// One candidate in a line: `  candidate 2 ★ seed 123456 semantic 7.0
/// quality 8.0 overall 7.5 verifier 7.9` (no seed, verifier or scores
/// when it has none).
pub fn candidate_line(candidate: &Value, chosen: bool) -> String {
    let one = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.1}"));
    let mark = if chosen {
        style("★").green().to_string()
    } else {
        " ".into()
    };
    let mut line = format!(
        "  candidate {} {mark}",
        candidate["index"].as_u64().unwrap_or(0)
    );
    if let Some(seed) = candidate["seed"].as_i64() {
        line.push_str(&format!(" seed {seed}"));
    }
    let critique = &candidate["critique"];
    if critique.is_object() {
        line.push_str(&format!(
            " semantic {} quality {} overall {}",
            one(&critique["semantic"]),
            one(&critique["quality"]),
            one(&critique["overall"]),
        ));
    } else {
        line.push_str(" not critiqued");
    }
    if candidate["verifier"]["overall"].is_number() {
        line.push_str(&format!(
            " verifier {}",
            one(&candidate["verifier"]["overall"])
        ));
    }
    if let Some(error) = critique["error"].as_str() {
        line.push_str(&format!(" ({error})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_last_or_a_satisfied_turn_the_job_is_finishing() {
        let mut watcher = Watcher::new();
        let unsatisfied = serde_json::json!({"satisfied": false});
        assert_eq!(watcher.after_critique(1, &unsatisfied), "editing turn 2");
        watcher.set_max_turns(Some(3));
        assert_eq!(watcher.after_critique(2, &unsatisfied), "editing turn 3");
        assert_eq!(watcher.after_critique(3, &unsatisfied), "finishing");
        let satisfied = serde_json::json!({"satisfied": true});
        assert_eq!(watcher.after_critique(1, &satisfied), "finishing");
    }

    #[test]
    fn reasoning_is_shown_without_its_tags_and_ends_at_the_score() {
        assert_eq!(
            readable_reasoning("<think>The sky is blue."),
            ("The sky is blue.".to_string(), false)
        );
        assert_eq!(
            readable_reasoning("it is purple now.</THINK> <score>{\"semantic\": 8}"),
            ("it is purple now.".to_string(), true)
        );
        assert_eq!(
            readable_reasoning("<answer>make it purple</answer>"),
            ("<answer>make it purple</answer>".to_string(), false),
            "only a line after the score holds the answer, and it is never shown"
        );
        assert_eq!(readable_reasoning("  "), (String::new(), false));
    }

    #[test]
    fn a_turn_line_has_the_index_the_scores_and_the_overall() {
        console::set_colors_enabled(false);
        let line = turn_line(&serde_json::json!({
            "turn": 2,
            "critique": {"semantic": 8.0, "quality": 9.0, "overall": 8.486, "satisfied": false,
                         "refined_instruction": "make it redder"}
        }));
        assert_eq!(
            line,
            "turn 2  semantic 8  quality 9  overall 8.49  -> \"make it redder\""
        );
    }

    /// A stored event of `kind` with `data`.
    fn event(kind: &str, data: serde_json::Value) -> Event {
        Event {
            id: Some(1),
            kind: kind.into(),
            data,
        }
    }

    /// A critique of the event and job JSON shape.
    fn critique(semantic: f64, quality: f64, overall: f64) -> serde_json::Value {
        serde_json::json!({"semantic": semantic, "quality": quality, "overall": overall,
                           "satisfied": false, "refined_instruction": "make it redder"})
    }

    #[test]
    fn a_candidate_line_has_its_seed_scores_and_verifier_and_a_star_when_chosen() {
        console::set_colors_enabled(false);
        let candidate = serde_json::json!({
            "index": 2, "seed": 123456, "critique": critique(7.0, 8.0, 7.483),
            "verifier": {"overall": 7.94}
        });
        assert_eq!(
            candidate_line(&candidate, true),
            "  candidate 2 ★ seed 123456 semantic 7.0 quality 8.0 overall 7.5 verifier 7.9"
        );
        // Not chosen, no verifier, no seed: the columns stay in place.
        let plain = serde_json::json!({"index": 0, "critique": critique(5.0, 6.0, 5.477), "verifier": null});
        assert_eq!(
            candidate_line(&plain, false),
            "  candidate 0   semantic 5.0 quality 6.0 overall 5.5"
        );
        let unscored = serde_json::json!({"index": 1, "seed": 9,
            "critique": {"semantic": null, "quality": null, "overall": null, "error": "no <score>"}});
        assert_eq!(
            candidate_line(&unscored, false),
            "  candidate 1   seed 9 semantic - quality - overall - (no <score>)"
        );
        let pending = serde_json::json!({"index": 3, "seed": 4, "critique": null});
        assert_eq!(
            candidate_line(&pending, false),
            "  candidate 3   seed 4 not critiqued"
        );
    }

    #[test]
    fn a_one_candidate_turn_has_no_candidate_lines() {
        let one =
            [serde_json::json!({"index": 0, "seed": null, "critique": critique(8.0, 9.0, 8.485)})];
        assert!(candidate_lines(&one, 0).is_empty());
        let three: Vec<_> = (0..3)
            .map(|i| serde_json::json!({"index": i, "critique": critique(5.0, 5.0, 5.0)}))
            .collect();
        let lines = candidate_lines(&three, 1);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines.iter().filter(|l| l.contains('★')).count(),
            1,
            "{lines:?}"
        );
        assert!(lines[1].starts_with("  candidate 1 ★"), "{lines:?}");
    }

    #[test]
    fn candidates_per_turn_follow_the_options() {
        let options = serde_json::json!({"candidates": 4, "first_turn_candidates": 2});
        assert_eq!(candidates_for(&options, 1), 2);
        assert_eq!(candidates_for(&options, 2), 4);
        assert_eq!(candidates_for(&serde_json::json!({"candidates": 3}), 1), 3);
        assert_eq!(candidates_for(&serde_json::Value::Null, 1), 1);
    }

    #[test]
    fn a_turn_of_several_candidates_is_printed_once_chosen_with_its_candidates() {
        console::set_colors_enabled(false);
        let mut watcher = Watcher::new();
        watcher.set_job(
            &serde_json::json!({"options": {"max_turns": 2, "candidates": 3}, "turns": []}),
        );
        // Edited and critiqued concurrently: the events interleave.
        for (kind, c) in [("turn.edited", 1), ("turn.edited", 0), ("turn.edited", 2)] {
            watcher.on(&event(
                kind,
                serde_json::json!({"turn": 1, "candidate": c, "instruction": "paint it"}),
            ));
        }
        for (c, s) in [(2, 7.0), (0, 5.0), (1, 9.0)] {
            watcher.on(&event(
                "turn.critiqued",
                serde_json::json!({"turn": 1, "candidate": c, "critique": critique(s, s, s)}),
            ));
        }
        let chosen = event(
            "turn.chosen",
            serde_json::json!({"turn": 1, "candidate": 1, "score": 9.0, "by": "thinker"}),
        );
        assert!(watcher.needs_job(&chosen), "the seeds are in the job");
        let (lines, critique) = watcher.chosen_lines(1, 1).unwrap();
        assert_eq!(
            lines,
            [
                "turn 1  semantic 9  quality 9  overall 9  \"paint it\"  -> \"make it redder\"",
                "  candidate 0   semantic 5.0 quality 5.0 overall 5.0",
                "  candidate 1 ★ semantic 9.0 quality 9.0 overall 9.0",
                "  candidate 2   semantic 7.0 quality 7.0 overall 7.0",
            ]
        );
        assert_eq!(critique["overall"], 9.0);
        assert!(watcher.chosen_lines(1, 1).is_none(), "printed once");
    }

    #[test]
    fn a_chosen_turn_takes_its_seeds_and_verifier_scores_from_the_job() {
        console::set_colors_enabled(false);
        let mut watcher = Watcher::new();
        for c in [0, 1] {
            watcher.on(&event(
                "turn.edited",
                serde_json::json!({"turn": 2, "candidate": c, "instruction": "x"}),
            ));
        }
        watcher.set_job(&serde_json::json!({"options": {"candidates": 2}, "turns": [{
            "index": 2, "chosen": 0, "candidates": [
                {"index": 0, "seed": 11, "critique": critique(8.0, 8.0, 8.0), "verifier": {"overall": 8.5}},
                {"index": 1, "seed": 12, "critique": critique(9.0, 9.0, 9.0), "verifier": {"overall": 6.0}},
            ]}]}));
        let (lines, _) = watcher.chosen_lines(2, 0).unwrap();
        assert_eq!(
            &lines[1..],
            [
                "  candidate 0 ★ seed 11 semantic 8.0 quality 8.0 overall 8.0 verifier 8.5",
                "  candidate 1   seed 12 semantic 9.0 quality 9.0 overall 9.0 verifier 6.0",
            ]
        );
    }

    #[test]
    fn a_one_candidate_turn_is_not_held_back_for_a_choice() {
        let mut watcher = Watcher::new();
        watcher.set_job(&serde_json::json!({"options": {"candidates": 1}}));
        watcher.on(&event(
            "turn.edited",
            serde_json::json!({"turn": 1, "candidate": 0, "instruction": "x"}),
        ));
        assert!(
            watcher.pending.is_empty(),
            "its line comes with its critique"
        );
        assert!(!watcher.several(1, 0));
        assert!(watcher.chosen_lines(1, 0).is_none());
        // A second candidate makes it a turn of several after all.
        assert!(watcher.several(1, 1));
    }
}
