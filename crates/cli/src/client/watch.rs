//! Drawing a job as it runs: one line per turn on stdout (index,
//! instruction, semantic and quality scores, overall), and on a terminal a
//! spinner with the elapsed time while the editor or thinker works, with
//! the thinker's reasoning streaming dimmed under the turn. Without a
//! terminal (a pipe, a file, CI) the same lines come out plain: no
//! spinner, no control codes. `NO_COLOR` turns colors off.

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
    /// The turn whose reasoning is streaming.
    reasoning_turn: Option<u64>,
    /// The streaming turn's reasoning reached its `<score>`: the rest is
    /// what its turn line shows.
    reasoning_over: bool,
    /// Whether reasoning is shown (on a terminal).
    show_reasoning: bool,
    /// The instruction each turn was edited with (`turn.edited`), for its
    /// line once critiqued.
    instructions: std::collections::HashMap<u64, String>,
    /// The job's `options.max_turns`, when known: no "editing turn N+1"
    /// after its last turn.
    max_turns: Option<u64>,
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
        }
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
                self.status(format!("thinking about turn {}", turn.unwrap_or(0)));
            }
            "turn.thinking" => {
                if let Some(delta) = data["delta"].as_str() {
                    self.reason(turn, delta);
                }
            }
            "turn.critiqued" => {
                self.flush_reasoning();
                let mut data = data.clone();
                if let Some(instruction) = turn.and_then(|t| self.instructions.get(&t)) {
                    data["instruction"] = instruction.clone().into();
                }
                self.line(&turn_line(&data));
                self.status(self.after_critique(turn.unwrap_or(0), &data["critique"]));
            }
            "job.succeeded" => self.status("done".into()),
            "job.failed" | "job.canceled" => {
                self.flush_reasoning();
            }
            _ => {}
        }
    }

    /// The connection dropped and is being resumed.
    pub fn reconnecting(&self) {
        self.status("connection lost; resuming".into());
    }

    /// Reasoning text: on a terminal, dimmed lines under the turn as they
    /// complete.
    fn reason(&mut self, turn: Option<u64>, delta: &str) {
        if !self.show_reasoning {
            return;
        }
        if self.reasoning_turn != turn {
            self.flush_reasoning();
            self.reasoning_turn = turn;
            // A heading, so the reasoning reads as the turn's, above its
            // scores.
            self.line(&format!(
                "{}",
                style(format!("turn {} thinking:", turn.unwrap_or(0))).dim()
            ));
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
}
