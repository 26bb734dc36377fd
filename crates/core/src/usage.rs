//! The usage ledger's pure part (docs/api.md "Usage"): the provider calls
//! a job paid for, and their sums per turn and per job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tokens one thinker call used; zero where the server did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tokens {
    /// Prompt tokens (images included).
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
}

/// What kind of provider a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// An editor call that returned an image.
    Editor,
    /// A thinker call that returned an answer (each parse retry counts).
    Thinker,
    /// A verifier call.
    Verifier,
}

impl CallKind {
    /// The ledger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Editor => "editor",
            Self::Thinker => "thinker",
            Self::Verifier => "verifier",
        }
    }

    /// Parses the ledger's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Editor, Self::Thinker, Self::Verifier]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One paid provider call, as the loop reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderCall {
    /// Which provider.
    pub kind: CallKind,
    /// The turn it was for.
    pub turn: u32,
    /// Its wall time.
    pub seconds: f64,
    /// Tokens (thinker and verifier calls).
    pub tokens: Tokens,
}

/// One call as the ledger keeps it, with what it cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerEntry {
    /// The call.
    pub call: ProviderCall,
    /// Its price under the configuration of the worker that made it.
    pub cost: f64,
}

/// Sums of provider calls (a job's, a turn's or a tenant's): the job JSON's
/// `usage` (contract).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Editor calls that returned an image.
    pub editor_calls: u32,
    /// Their wall time, in seconds.
    pub editor_seconds: f64,
    /// Thinker calls that returned an answer.
    pub thinker_calls: u32,
    /// Prompt tokens of those calls.
    pub thinker_input_tokens: u64,
    /// Generated tokens of those calls.
    pub thinker_output_tokens: u64,
    /// Verifier calls.
    pub verifier_calls: u32,
    /// What the calls cost at the configured prices.
    pub cost: f64,
    /// The currency of `cost` (the configuration's `currency`).
    pub currency: String,
}

impl Usage {
    /// Empty usage in `currency`.
    pub fn zero(currency: &str) -> Self {
        Self {
            currency: currency.to_string(),
            ..Self::default()
        }
    }

    /// Adds one ledger entry.
    pub fn add(&mut self, entry: &LedgerEntry) {
        let call = &entry.call;
        self.add_calls(call.kind, 1, call.seconds, call.tokens, entry.cost);
    }

    /// Adds `calls` calls of `kind` with their summed seconds, tokens and
    /// cost (one ledger entry, or a driver's sum of many).
    pub fn add_calls(
        &mut self,
        kind: CallKind,
        calls: u32,
        seconds: f64,
        tokens: Tokens,
        cost: f64,
    ) {
        match kind {
            CallKind::Editor => {
                self.editor_calls += calls;
                self.editor_seconds += seconds;
            }
            CallKind::Thinker => {
                self.thinker_calls += calls;
                self.thinker_input_tokens += tokens.input;
                self.thinker_output_tokens += tokens.output;
            }
            CallKind::Verifier => self.verifier_calls += calls,
        }
        self.cost += cost;
    }

    /// The sum of `parts` (in `currency`, theirs when there is one), rounded.
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a Usage>, currency: &str) -> Usage {
        let mut parts = parts.into_iter().peekable();
        let currency = parts.peek().map_or(currency, |u| u.currency.as_str());
        let mut total = Usage::zero(currency);
        for part in parts {
            total.editor_calls += part.editor_calls;
            total.editor_seconds += part.editor_seconds;
            total.thinker_calls += part.thinker_calls;
            total.thinker_input_tokens += part.thinker_input_tokens;
            total.thinker_output_tokens += part.thinker_output_tokens;
            total.verifier_calls += part.verifier_calls;
            total.cost += part.cost;
        }
        total.rounded()
    }

    /// Rounds the sums for display: seconds to milliseconds, cost to
    /// millionths (float sums drift in the last digits).
    pub fn rounded(mut self) -> Self {
        self.editor_seconds = (self.editor_seconds * 1e3).round() / 1e3;
        self.cost = (self.cost * 1e6).round() / 1e6;
        self
    }
}

/// A job's usage in total and per turn, from its ledger entries.
pub fn summarize(entries: &[LedgerEntry], currency: &str) -> (Usage, BTreeMap<u32, Usage>) {
    let mut total = Usage::zero(currency);
    let mut turns: BTreeMap<u32, Usage> = BTreeMap::new();
    for entry in entries {
        total.add(entry);
        turns
            .entry(entry.call.turn)
            .or_insert_with(|| Usage::zero(currency))
            .add(entry);
    }
    let turns = turns.into_iter().map(|(t, u)| (t, u.rounded())).collect();
    (total.rounded(), turns)
}

/// Prices of provider calls (docs/configuration.md "Prices").
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prices {
    /// Per editor call.
    pub per_editor_call: f64,
    /// Per million thinker prompt tokens.
    pub thinker_per_million_input: f64,
    /// Per million thinker generated tokens.
    pub thinker_per_million_output: f64,
    /// Per million verifier prompt tokens.
    pub verifier_per_million_input: f64,
    /// Per million verifier generated tokens.
    pub verifier_per_million_output: f64,
}

impl Prices {
    /// What `call` costs.
    pub fn cost(&self, call: &ProviderCall) -> f64 {
        let per_token = |input: f64, output: f64| {
            (call.tokens.input as f64 * input + call.tokens.output as f64 * output) / 1e6
        };
        match call.kind {
            CallKind::Editor => self.per_editor_call,
            CallKind::Thinker => per_token(
                self.thinker_per_million_input,
                self.thinker_per_million_output,
            ),
            CallKind::Verifier => per_token(
                self.verifier_per_million_input,
                self.verifier_per_million_output,
            ),
        }
    }
}

/// What a job has spent (its ledger, every attempt's calls included) and
/// what its next calls are reserved at, for `options.budget`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spending {
    /// Editor calls paid so far.
    pub editor_calls: u32,
    /// Cost paid so far.
    pub cost: f64,
    /// The job's prices.
    pub prices: Prices,
    /// Tokens one critique is reserved at: its output at most the
    /// thinker's `max_tokens`, its prompt the largest seen so far (or the
    /// configured estimate, whichever is larger).
    pub critique_reserve: Tokens,
    /// Tokens one verifier call is reserved at, like `critique_reserve`;
    /// `None` where the worker has no verifier.
    pub verifier_reserve: Option<Tokens>,
}

impl Spending {
    /// Counts one paid call.
    pub fn add(&mut self, entry: &LedgerEntry) {
        match entry.call.kind {
            CallKind::Editor => self.editor_calls += 1,
            CallKind::Thinker => {
                let seen = entry.call.tokens.input;
                self.critique_reserve.input = self.critique_reserve.input.max(seen);
            }
            CallKind::Verifier => {
                if let Some(reserve) = &mut self.verifier_reserve {
                    reserve.input = reserve.input.max(entry.call.tokens.input);
                }
            }
        }
        self.cost += entry.cost;
    }

    /// What one critique is reserved at.
    pub fn critique_cost(&self) -> f64 {
        self.prices.cost(&ProviderCall {
            kind: CallKind::Thinker,
            turn: 0,
            seconds: 0.0,
            tokens: self.critique_reserve,
        })
    }

    /// What one verifier call is reserved at (0 without a verifier).
    pub fn verification_cost(&self) -> f64 {
        self.verifier_reserve.map_or(0.0, |tokens| {
            self.prices.cost(&ProviderCall {
                kind: CallKind::Verifier,
                turn: 0,
                seconds: 0.0,
                tokens,
            })
        })
    }

    /// What one new candidate is reserved at: its edit, its critique and
    /// its verification.
    pub fn candidate_cost(&self) -> f64 {
        self.prices.per_editor_call + self.critique_cost() + self.verification_cost()
    }

    /// How many of `wanted` new candidates fit `budget` beside what calls
    /// in flight hold (`held`).
    pub fn candidates_that_fit(
        &self,
        budget: &crate::options::Budget,
        held: Held,
        wanted: u32,
    ) -> u32 {
        (0..=wanted)
            .rev()
            .find(|&n| {
                let calls = budget
                    .max_editor_calls
                    .is_none_or(|most| self.editor_calls + held.editor_calls + n <= most);
                let reserve = held.cost + f64::from(n) * self.candidate_cost();
                calls
                    && budget
                        .max_cost
                        .is_none_or(|most| fits(self.cost + reserve, most))
            })
            .unwrap_or(0)
    }

    /// Whether a new edit, and the critique that judges it, fit `budget`.
    pub fn edit_fits(&self, budget: &crate::options::Budget) -> bool {
        self.candidates_that_fit(budget, Held::default(), 1) == 1
    }

    /// Whether another critique call (a parse retry) fits `budget` beside
    /// what calls in flight hold.
    pub fn critique_fits(&self, budget: &crate::options::Budget, held: Held) -> bool {
        budget
            .max_cost
            .is_none_or(|most| fits(self.cost + held.cost + self.critique_cost(), most))
    }
}

/// What calls in flight have reserved and not yet paid: concurrent
/// candidates each hold their edit, critique and verification until paid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Held {
    /// Editor calls reserved.
    pub editor_calls: u32,
    /// Cost reserved.
    pub cost: f64,
}

/// `total` within `most`, forgiving float sums their last digits.
fn fits(total: f64, most: f64) -> bool {
    total <= most + 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: CallKind, turn: u32, seconds: f64, input: u64, output: u64) -> LedgerEntry {
        let call = ProviderCall {
            kind,
            turn,
            seconds,
            tokens: Tokens { input, output },
        };
        let prices = Prices {
            per_editor_call: 0.04,
            thinker_per_million_input: 2.0,
            thinker_per_million_output: 8.0,
            ..Prices::default()
        };
        LedgerEntry {
            cost: prices.cost(&call),
            call,
        }
    }

    #[test]
    fn sums_per_job_and_per_turn() {
        let entries = [
            entry(CallKind::Editor, 1, 1.5, 0, 0),
            entry(CallKind::Thinker, 1, 2.0, 1000, 200),
            // A parse retry is a second paid call of the same turn.
            entry(CallKind::Thinker, 1, 2.0, 1000, 100),
            entry(CallKind::Editor, 2, 0.25, 0, 0),
        ];
        let (total, turns) = summarize(&entries, "EUR");
        assert_eq!(total.editor_calls, 2);
        assert_eq!(total.editor_seconds, 1.75);
        assert_eq!(total.thinker_calls, 2);
        assert_eq!(
            (total.thinker_input_tokens, total.thinker_output_tokens),
            (2000, 300)
        );
        // 2 × 0.04 + (2000 × 2 + 300 × 8) / 1e6
        assert_eq!(total.cost, 0.0864);
        assert_eq!(total.currency, "EUR");
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[&1].thinker_calls, 2);
        assert_eq!(turns[&2].editor_calls, 1);
        assert_eq!(turns[&2].cost, 0.04);
        assert_eq!(summarize(&[], "USD").0, Usage::zero("USD"));
    }

    #[test]
    fn budgets_reserve_the_next_edit_and_its_critique() {
        use crate::options::Budget;
        let mut spending = Spending {
            prices: Prices {
                per_editor_call: 0.04,
                thinker_per_million_input: 2.0,
                thinker_per_million_output: 8.0,
                ..Prices::default()
            },
            critique_reserve: Tokens {
                input: 1000,
                output: 500,
            },
            ..Spending::default()
        };
        // A critique is reserved at 1000 × 2 + 500 × 8 per million: 0.006.
        assert!((spending.critique_cost() - 0.006).abs() < 1e-12);
        let budget = Budget {
            max_editor_calls: Some(2),
            max_cost: Some(0.1),
        };
        assert!(spending.edit_fits(&budget));
        for e in [
            entry(CallKind::Editor, 1, 1.0, 0, 0),
            entry(CallKind::Thinker, 1, 1.0, 3000, 100),
        ] {
            spending.add(&e);
        }
        // A larger prompt raises the reserve: 3000 × 2 + 500 × 8.
        assert!((spending.critique_cost() - 0.01).abs() < 1e-12);
        assert_eq!(spending.editor_calls, 1);
        // Spent 0.04 + 0.0068; the next edit reserves 0.04 + 0.01: fits.
        assert!(spending.edit_fits(&budget));
        spending.add(&entry(CallKind::Editor, 2, 1.0, 0, 0));
        // The call limit is reached, whatever the money says.
        assert!(!spending.edit_fits(&budget));
        assert!(spending.edit_fits(&Budget {
            max_cost: Some(1.0),
            ..Budget::default()
        }));
        // 0.0868 spent: a retry reserving 0.01 fits 0.1, a third edit does not.
        assert!(spending.critique_fits(&budget, Held::default()));
        let tight = Budget {
            max_cost: Some(0.09),
            ..Budget::default()
        };
        assert!(!spending.critique_fits(&tight, Held::default()) && !spending.edit_fits(&tight));
        assert!(spending.edit_fits(&Budget::default()));
    }

    #[test]
    fn candidates_fit_beside_what_is_held() {
        use crate::options::Budget;
        let spending = Spending {
            prices: Prices {
                per_editor_call: 0.05,
                verifier_per_million_input: 10.0,
                ..Prices::default()
            },
            verifier_reserve: Some(Tokens {
                input: 1000,
                output: 0,
            }),
            ..Spending::default()
        };
        // Each candidate reserves 0.05 + 0 + 0.01.
        assert!((spending.candidate_cost() - 0.06).abs() < 1e-12);
        let by_cost = Budget {
            max_cost: Some(0.2),
            ..Budget::default()
        };
        assert_eq!(
            spending.candidates_that_fit(&by_cost, Held::default(), 8),
            3
        );
        let held = Held {
            editor_calls: 1,
            cost: 0.06,
        };
        assert_eq!(spending.candidates_that_fit(&by_cost, held, 8), 2);
        let by_calls = Budget {
            max_editor_calls: Some(4),
            ..Budget::default()
        };
        assert_eq!(spending.candidates_that_fit(&by_calls, held, 8), 3);
        assert_eq!(spending.candidates_that_fit(&by_calls, held, 2), 2);
        assert_eq!(spending.candidates_that_fit(&Budget::default(), held, 8), 8);
        assert!(!spending.critique_fits(
            &Budget {
                max_cost: Some(0.05),
                ..Budget::default()
            },
            held
        ));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [CallKind::Editor, CallKind::Thinker, CallKind::Verifier] {
            assert_eq!(CallKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CallKind::parse("judge"), None);
    }
}
