//! Per-job loop options (docs/api.md "Loop options") with their defaults and limits.

use serde::{Deserialize, Serialize};

/// Smallest allowed `max_turns`.
pub const MIN_TURNS: u32 = 1;
/// Largest allowed `max_turns`.
pub const MAX_TURNS: u32 = 10;

/// How the result turn is chosen once the loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum Selection {
    /// Critique every turn and return the one with the highest overall score.
    #[default]
    Best,
    /// The paper's rule: the satisfied turn, else the last one.
    Last,
}

/// Scores at or above which the thinker's critique counts as satisfied.
// Defaults are per field, not `#[serde(default)]` on the struct: utoipa
// writes a struct-wide default into the document as each field's `default`,
// which openapi-typescript then makes required (so a client could not send
// `{"max_turns": 2}` alone). Field defaults only make the field optional.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopThresholds {
    /// Minimum semantic score, 0..=10 (default 8).
    #[serde(default = "default_threshold")]
    #[schema(minimum = 0, maximum = 10)]
    pub semantic: f64,
    /// Minimum quality score, 0..=10 (default 8).
    #[serde(default = "default_threshold")]
    #[schema(minimum = 0, maximum = 10)]
    pub quality: f64,
    /// Turns without progress before the loop stops with `plateau`, 0..=10
    /// (default 0: never). The loop stops when the best overall score has
    /// not risen by `min_gain` within the last `patience` turns.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10)]
    pub patience: u32,
    /// The overall-score rise that counts as progress for `patience`,
    /// 0..=10 (default 0.25).
    #[serde(default = "default_min_gain")]
    #[schema(minimum = 0, maximum = 10)]
    pub min_gain: f64,
    /// The verifier's gate, 0..=10 (default: off): a turn the thinker calls
    /// satisfied only counts as satisfied when the verifier's overall score
    /// of its chosen candidate reaches it. Needs a `[verifier]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10)]
    pub verifier: Option<f64>,
}

fn default_threshold() -> f64 {
    8.0
}

fn default_min_gain() -> f64 {
    0.25
}

/// Largest allowed `stop.patience`.
pub const MAX_PATIENCE: u32 = 10;

/// What the thinker is told of earlier turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum History {
    /// The paper's protocol: the original and the previous instruction.
    #[default]
    Previous,
    /// Also every earlier turn's instruction, scores and a one-line reason,
    /// as text. EditThinker-8B was trained without it.
    All,
}

/// Which score picks a turn's candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum RankBy {
    /// The thinker's overall score, `sqrt(semantic × quality)`.
    #[default]
    Thinker,
    /// The verifier's overall score (needs a `[verifier]`).
    Verifier,
}

impl RankBy {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Thinker => "thinker",
            Self::Verifier => "verifier",
        }
    }
}

/// Largest allowed `candidates` and `first_turn_candidates`.
pub const MAX_CANDIDATES: u32 = 8;

fn default_candidates() -> u32 {
    1
}

fn default_max_turns() -> u32 {
    5
}

impl Default for StopThresholds {
    fn default() -> Self {
        Self {
            semantic: default_threshold(),
            quality: default_threshold(),
            patience: 0,
            min_gain: default_min_gain(),
            verifier: None,
        }
    }
}

/// Largest allowed `budget.max_editor_calls`.
pub const MAX_BUDGET_EDITOR_CALLS: u32 = 100;

/// What one job may spend (`options.budget`): no call starts that could
/// take it past either limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Editor calls at most, every attempt's included, 1..=100 (default:
    /// no limit besides `max_turns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_editor_calls: Option<u32>,
    /// Cost at most, in the configuration's `currency`, above 0 (default:
    /// no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub max_cost: Option<f64>,
}

/// Options a client may set per job; every field has a server default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    /// Editor calls at most, 1..=10 (default 5).
    #[serde(default = "default_max_turns")]
    #[schema(schema_with = max_turns_schema)]
    pub max_turns: u32,
    /// Stop thresholds (default 8 and 8).
    // A plain reference: utoipa writes a defaulted reference as a `oneOf`
    // with a `default`, which generated clients reject.
    #[serde(default)]
    #[schema(schema_with = stop_schema)]
    pub stop: StopThresholds,
    /// Result selection rule (default `best`).
    #[serde(default)]
    #[schema(schema_with = selection_schema)]
    pub selection: Selection,
    /// Spending limits (default none).
    #[serde(default)]
    #[schema(schema_with = budget_schema)]
    pub budget: Budget,
    /// What the thinker sees of earlier turns (default `previous`).
    #[serde(default)]
    #[schema(schema_with = history_schema)]
    pub history: History,
    /// Candidates edited per turn, concurrently, from the source with the
    /// same instruction and distinct seeds, 1..=8 (default 1, the paper's
    /// loop). Each is critiqued; the best by `rank_by` is the turn's.
    #[serde(default = "default_candidates")]
    #[schema(minimum = 1, maximum = 8)]
    pub candidates: u32,
    /// Candidates of the first turn, 1..=8 (default: `candidates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 8)]
    pub first_turn_candidates: Option<u32>,
    /// Which score chooses a turn's candidate (default `thinker`).
    #[serde(default)]
    #[schema(schema_with = rank_by_schema)]
    pub rank_by: RankBy,
    /// Seconds after creation by which the job must be done, 1..=86400.
    /// When it passes, the job stops at once and succeeds with the best of
    /// its recorded turns, or fails with `deadline_exceeded` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub deadline_seconds: Option<u32>,
}

/// `max_turns` with its server default as `x-server-default`, not
/// `default`: generators (openapi-typescript) make a defaulted property
/// required, and a request must be free to leave it out. The viewer reads
/// the extension for its form (crates/api/ui/app.js).
fn max_turns_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .description(Some("Editor calls at most, 1..=10 (default 5)."))
        .minimum(Some(1))
        .maximum(Some(10))
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-server-default", default_max_turns())
                .build(),
        ))
        .build()
}

fn stop_schema() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("StopThresholds")
}

fn selection_schema() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("Selection")
}

fn budget_schema() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("Budget")
}

fn rank_by_schema() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("RankBy")
}

fn history_schema() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("History")
}

/// Largest allowed `deadline_seconds` (a day).
pub const MAX_DEADLINE_SECONDS: u32 = 86_400;

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            max_turns: default_max_turns(),
            stop: StopThresholds::default(),
            selection: Selection::Best,
            history: History::Previous,
            budget: Budget::default(),
            candidates: default_candidates(),
            first_turn_candidates: None,
            rank_by: RankBy::Thinker,
            deadline_seconds: None,
        }
    }
}

/// An option outside its allowed range: which field, and the rule it broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct OptionsError {
    /// Dotted path of the offending field, e.g. `options.stop.semantic`.
    pub field: String,
    /// The rule, in words.
    pub rule: String,
}

impl JobOptions {
    /// How many candidates turn `turn` (from 1) edits.
    pub fn candidates_for(&self, turn: u32) -> u32 {
        let k = match self.first_turn_candidates {
            Some(first) if turn == 1 => first,
            _ => self.candidates,
        };
        k.clamp(1, MAX_CANDIDATES)
    }

    /// Whether the job needs a `[verifier]`: the field that asks for one.
    pub fn verifier_field(&self) -> Option<&'static str> {
        if self.rank_by == RankBy::Verifier {
            Some("options.rank_by")
        } else if self.stop.verifier.is_some() {
            Some("options.stop.verifier")
        } else {
            None
        }
    }

    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), OptionsError> {
        for (field, value) in [
            ("options.candidates", Some(self.candidates)),
            ("options.first_turn_candidates", self.first_turn_candidates),
        ] {
            if value.is_some_and(|k| !(1..=MAX_CANDIDATES).contains(&k)) {
                return Err(OptionsError {
                    field: field.into(),
                    rule: format!("must be an integer from 1 to {MAX_CANDIDATES}"),
                });
            }
        }
        if !(MIN_TURNS..=MAX_TURNS).contains(&self.max_turns) {
            return Err(OptionsError {
                field: "options.max_turns".into(),
                rule: format!("must be between {MIN_TURNS} and {MAX_TURNS}"),
            });
        }
        if let Some(seconds) = self.deadline_seconds {
            if !(1..=MAX_DEADLINE_SECONDS).contains(&seconds) {
                return Err(OptionsError {
                    field: "options.deadline_seconds".into(),
                    rule: format!("must be between 1 and {MAX_DEADLINE_SECONDS} seconds"),
                });
            }
        }
        if let Some(calls) = self.budget.max_editor_calls {
            if !(1..=MAX_BUDGET_EDITOR_CALLS).contains(&calls) {
                return Err(OptionsError {
                    field: "options.budget.max_editor_calls".into(),
                    rule: format!("must be an integer from 1 to {MAX_BUDGET_EDITOR_CALLS}"),
                });
            }
        }
        if let Some(cost) = self.budget.max_cost {
            if !cost.is_finite() || cost <= 0.0 {
                return Err(OptionsError {
                    field: "options.budget.max_cost".into(),
                    rule: "must be a number above 0".into(),
                });
            }
        }
        if self.stop.patience > MAX_PATIENCE {
            return Err(OptionsError {
                field: "options.stop.patience".into(),
                rule: format!("must be an integer from 0 to {MAX_PATIENCE}"),
            });
        }
        for (name, value) in [
            ("semantic", self.stop.semantic),
            ("quality", self.stop.quality),
            ("min_gain", self.stop.min_gain),
            ("verifier", self.stop.verifier.unwrap_or(0.0)),
        ] {
            if !value.is_finite() || !(0.0..=10.0).contains(&value) {
                return Err(OptionsError {
                    field: format!("options.stop.{name}"),
                    rule: "must be a number between 0 and 10".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let o = JobOptions::default();
        assert_eq!(o.max_turns, 5);
        assert_eq!(o.stop.semantic, 8.0);
        assert_eq!(o.stop.quality, 8.0);
        assert_eq!(o.selection, Selection::Best);
        assert_eq!(o.history, History::Previous);
        assert_eq!((o.stop.patience, o.stop.min_gain), (0, 0.25));
        assert_eq!(
            (o.candidates, o.rank_by, o.stop.verifier),
            (1, RankBy::Thinker, None)
        );
        assert_eq!(o.verifier_field(), None);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn ranges_are_enforced_with_field_names() {
        let cases = [
            (json(r#"{"max_turns":0}"#), Some("options.max_turns")),
            (json(r#"{"max_turns":11}"#), Some("options.max_turns")),
            (json(r#"{"max_turns":10}"#), None),
            (json(r#"{"max_turns":1}"#), None),
            (
                json(r#"{"stop":{"semantic":10.5}}"#),
                Some("options.stop.semantic"),
            ),
            (
                json(r#"{"stop":{"quality":-1}}"#),
                Some("options.stop.quality"),
            ),
            (json(r#"{"stop":{"quality":0}}"#), None),
            (
                json(r#"{"deadline_seconds":0}"#),
                Some("options.deadline_seconds"),
            ),
            (
                json(r#"{"deadline_seconds":86401}"#),
                Some("options.deadline_seconds"),
            ),
            (json(r#"{"deadline_seconds":86400}"#), None),
            (
                json(r#"{"stop":{"patience":11}}"#),
                Some("options.stop.patience"),
            ),
            (json(r#"{"stop":{"patience":10}}"#), None),
            (
                json(r#"{"stop":{"min_gain":-0.1}}"#),
                Some("options.stop.min_gain"),
            ),
            (json(r#"{"stop":{"min_gain":0}}"#), None),
            (
                json(r#"{"budget":{"max_editor_calls":0}}"#),
                Some("options.budget.max_editor_calls"),
            ),
            (json(r#"{"budget":{"max_editor_calls":100}}"#), None),
            (
                json(r#"{"budget":{"max_cost":0}}"#),
                Some("options.budget.max_cost"),
            ),
            (json(r#"{"budget":{"max_cost":0.01}}"#), None),
            (json(r#"{"candidates":0}"#), Some("options.candidates")),
            (json(r#"{"candidates":9}"#), Some("options.candidates")),
            (json(r#"{"candidates":8}"#), None),
            (
                json(r#"{"first_turn_candidates":9}"#),
                Some("options.first_turn_candidates"),
            ),
            (
                json(r#"{"stop":{"verifier":10.5}}"#),
                Some("options.stop.verifier"),
            ),
            (json(r#"{"stop":{"verifier":7}}"#), None),
        ];
        for (options, field) in cases {
            let got = options.validate().err().map(|e| e.field);
            assert_eq!(got.as_deref(), field, "{options:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_selection_are_rejected() {
        assert!(serde_json::from_str::<JobOptions>(r#"{"turns":3}"#).is_err());
        assert!(serde_json::from_str::<JobOptions>(r#"{"selection":"first"}"#).is_err());
        let o: JobOptions = serde_json::from_str(r#"{"selection":"last"}"#).unwrap();
        assert_eq!(o.selection, Selection::Last);
        assert_eq!(o.max_turns, 5);
    }

    #[test]
    fn the_first_turn_may_edit_another_number_of_candidates() {
        let o = json(r#"{"candidates":4,"first_turn_candidates":2}"#);
        assert_eq!((o.candidates_for(1), o.candidates_for(2)), (2, 4));
        let o = json(r#"{"candidates":3}"#);
        assert_eq!((o.candidates_for(1), o.candidates_for(5)), (3, 3));
        let o = json(r#"{"rank_by":"verifier"}"#);
        assert_eq!(o.verifier_field(), Some("options.rank_by"));
        let o = json(r#"{"stop":{"verifier":6}}"#);
        assert_eq!(o.verifier_field(), Some("options.stop.verifier"));
    }

    fn json(s: &str) -> JobOptions {
        serde_json::from_str(s).unwrap()
    }
}
