//! The run folder's report (contract: docs/eval.md): `cases.jsonl`, one
//! line per case; `summary.json`, the aggregates; `report.md`, the same
//! for people. Aggregation ([`summarize`]) is pure; [`write`] writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::judge::Judgement;
use crate::stats::{mean_ci95, spearman, Interval};

/// Scores 0–10 with their overall `sqrt(semantic × quality)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Instruction following.
    pub semantic: Option<f64>,
    /// Visual quality.
    pub quality: Option<f64>,
    /// The overall score.
    pub overall: Option<f64>,
}

impl Scores {
    /// The thinker's scores of a critique in the job JSON (all `None`
    /// without one).
    pub fn of_critique(critique: &Value) -> Self {
        Self {
            semantic: critique["semantic"].as_f64(),
            quality: critique["quality"].as_f64(),
            overall: critique["overall"].as_f64(),
        }
    }
}

/// The judge's VIEScore-style scores of one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JudgeScores {
    /// Semantic consistency: min(instruction followed, no over-editing).
    pub sc: f64,
    /// Perceptual quality: min(naturalness, no artifacts).
    pub pq: f64,
    /// `sqrt(sc × pq)`.
    pub o: f64,
}

impl From<Judgement> for JudgeScores {
    fn from(j: Judgement) -> Self {
        Self {
            sc: j.sc,
            pq: j.pq,
            o: j.o,
        }
    }
}

/// A judged candidate (`--candidates`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// Its number in the turn.
    pub index: u32,
    /// The seed it asked the editor for.
    pub seed: Option<i64>,
    /// The thinker's scores.
    pub thinker: Scores,
    /// The verifier's overall score, where there was one.
    pub verifier: Option<f64>,
    /// The judge's.
    pub judge: JudgeScores,
}

/// A judged turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// Turn number, from 1.
    pub index: u32,
    /// The instruction the editor received.
    pub instruction: String,
    /// The thinker's scores.
    pub thinker: Scores,
    /// The verifier's overall score of the turn's image, where there was one.
    pub verifier: Option<f64>,
    /// The judge's.
    pub judge: JudgeScores,
    /// Editor wall time.
    pub editor_ms: u64,
    /// Thinker wall time, where the turn was critiqued.
    pub thinker_ms: Option<u64>,
    /// The judged candidates (`--candidates`; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateRecord>,
}

/// One line of `cases.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The case's id in its suite.
    pub id: String,
    /// Its group.
    pub group: Option<String>,
    /// Its language.
    pub language: Option<String>,
    /// Its job.
    pub job_id: String,
    /// The job's status.
    pub status: String,
    /// The job's error code, when it failed.
    pub error: Option<String>,
    /// The turn the service selected.
    pub selected_turn: Option<u32>,
    /// Editor calls the job paid for.
    pub editor_calls: u64,
    /// What the job cost.
    pub cost: f64,
    /// In this currency.
    pub currency: String,
    /// Its turns, judged.
    pub turns: Vec<TurnRecord>,
}

impl CaseRecord {
    fn judged(&self, turn: u32) -> Option<f64> {
        self.turns
            .iter()
            .find(|t| t.index == turn)
            .map(|t| t.judge.o)
    }

    /// The judge's O of each selection rule: the first turn (the editor
    /// alone), the last turn (the paper's rule), the service's selection,
    /// and the best turn (the ceiling of any rule). `None` without turns.
    pub fn selections(&self) -> Option<Selections<f64>> {
        let first = self.turns.first()?.judge.o;
        let last = self.turns.last()?.judge.o;
        Some(Selections {
            first,
            last,
            service: self
                .selected_turn
                .and_then(|t| self.judged(t))
                .unwrap_or(last),
            oracle: self
                .turns
                .iter()
                .map(|t| t.judge.o)
                .fold(f64::MIN, f64::max),
        })
    }
}

/// One value per selection rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Selections<T> {
    /// The first turn: the editor alone.
    pub first: T,
    /// The last turn: the paper's rule.
    pub last: T,
    /// The turn the service selected.
    pub service: T,
    /// The judge's best turn.
    pub oracle: T,
}

/// A group's (or the whole run's) aggregates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    /// Cases with at least one judged turn.
    pub cases: usize,
    /// Mean judge O of each selection rule, with a 95 % interval.
    pub selections: Option<Selections<Interval>>,
    /// Spearman's ρ between the thinker's and the judge's overall scores
    /// over every critiqued turn.
    pub spearman_thinker_judge: Option<f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Cases with at least one judged turn.
    pub cases: usize,
    /// Cases whose job did not succeed.
    pub failed: usize,
    /// Turn → mean judge O (95 % interval) over the cases that reached it.
    pub by_turn: BTreeMap<u32, Interval>,
    /// Mean judge O of each selection rule.
    pub selections: Option<Selections<Interval>>,
    /// Per group.
    pub by_group: BTreeMap<String, GroupSummary>,
    /// Editor calls paid for, every case.
    pub editor_calls: u64,
    /// What the jobs cost.
    pub cost: f64,
    /// In this currency.
    pub currency: String,
    /// Editor calls per point of O the service's selection gained over the
    /// first turn (`None` without a gain).
    pub editor_calls_per_point: Option<f64>,
    /// Cost per point of O gained, likewise.
    pub cost_per_point: Option<f64>,
    /// Spearman's ρ between the thinker's and the judge's overall scores.
    pub spearman_thinker_judge: Option<f64>,
    /// The same for the verifier, where there was one.
    pub spearman_verifier_judge: Option<f64>,
}

fn group_summary<'a>(cases: impl Iterator<Item = &'a CaseRecord> + Clone) -> GroupSummary {
    let selections: Vec<Selections<f64>> =
        cases.clone().filter_map(CaseRecord::selections).collect();
    let pairs: Vec<(f64, f64)> = cases
        .flat_map(|c| c.turns.iter())
        .filter_map(|t| Some((t.thinker.overall?, t.judge.o)))
        .collect();
    GroupSummary {
        cases: selections.len(),
        selections: summarize_selections(&selections),
        spearman_thinker_judge: rank_agreement(&pairs),
    }
}

fn summarize_selections(selections: &[Selections<f64>]) -> Option<Selections<Interval>> {
    let of = |pick: fn(&Selections<f64>) -> f64| {
        mean_ci95(&selections.iter().map(pick).collect::<Vec<_>>())
    };
    Some(Selections {
        first: of(|s| s.first)?,
        last: of(|s| s.last)?,
        service: of(|s| s.service)?,
        oracle: of(|s| s.oracle)?,
    })
}

fn rank_agreement(pairs: &[(f64, f64)]) -> Option<f64> {
    let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    spearman(&a, &b)
}

/// Aggregates the cases.
pub fn summarize(cases: &[CaseRecord]) -> Summary {
    let mut by_turn: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for turn in cases.iter().flat_map(|c| c.turns.iter()) {
        by_turn.entry(turn.index).or_default().push(turn.judge.o);
    }
    let mut groups: BTreeMap<String, Vec<&CaseRecord>> = BTreeMap::new();
    for case in cases {
        groups
            .entry(case.group.clone().unwrap_or_default())
            .or_default()
            .push(case);
    }
    let all = group_summary(cases.iter());
    let editor_calls = cases.iter().map(|c| c.editor_calls).sum();
    let cost = cases.iter().map(|c| c.cost).sum();
    let gain = all
        .selections
        .map(|s| s.service.mean - s.first.mean)
        .filter(|g| *g > 0.0);
    let verifier_pairs: Vec<(f64, f64)> = cases
        .iter()
        .flat_map(|c| c.turns.iter())
        .filter_map(|t| Some((t.verifier?, t.judge.o)))
        .collect();
    Summary {
        cases: all.cases,
        failed: cases.iter().filter(|c| c.status != "succeeded").count(),
        by_turn: by_turn
            .into_iter()
            .filter_map(|(turn, values)| Some((turn, mean_ci95(&values)?)))
            .collect(),
        selections: all.selections,
        by_group: groups
            .into_iter()
            .map(|(group, cases)| (group, group_summary(cases.into_iter())))
            .collect(),
        editor_calls,
        cost,
        currency: cases
            .first()
            .map_or_else(|| "USD".to_string(), |c| c.currency.clone()),
        editor_calls_per_point: gain.map(|g| editor_calls as f64 / all.cases as f64 / g),
        cost_per_point: gain.map(|g| cost / all.cases as f64 / g),
        spearman_thinker_judge: all.spearman_thinker_judge,
        spearman_verifier_judge: rank_agreement(&verifier_pairs),
    }
}

/// Writes `cases.jsonl`, `summary.json` and `report.md` into `out`.
pub fn write(out: &Path, cases: &[CaseRecord]) -> anyhow::Result<Summary> {
    let mut lines = String::new();
    for case in cases {
        lines.push_str(&serde_json::to_string(case)?);
        lines.push('\n');
    }
    let summary = summarize(cases);
    for (name, body) in [
        ("cases.jsonl", lines),
        (
            "summary.json",
            serde_json::to_string_pretty(&summary)? + "\n",
        ),
        ("report.md", markdown(&summary, cases)),
        ("report.html", crate::html::render(&summary, cases, out)?),
    ] {
        let path = out.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

fn interval(i: &Interval) -> String {
    format!("{:.2} [{:.2}, {:.2}]", i.mean, i.lo, i.hi)
}

fn rho(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.3}"))
}

/// `report.md`: the summary as tables.
pub fn markdown(summary: &Summary, cases: &[CaseRecord]) -> String {
    let mut md = String::from("# Evaluation report\n\n");
    let _ = writeln!(
        md,
        "{} cases judged, {} not succeeded; {} editor calls, {:.4} {} spent.\n",
        summary.cases, summary.failed, summary.editor_calls, summary.cost, summary.currency
    );
    md.push_str(
        "## Judge O by turn (mean [95 % interval])\n\n| turn | cases | O |\n|---|---|---|\n",
    );
    for (turn, i) in &summary.by_turn {
        let _ = writeln!(md, "| {turn} | {} | {} |", i.n, interval(i));
    }
    md.push_str("\n## Selection rules\n\n| group | cases | first turn | last turn | service | best turn (ceiling) | ρ thinker–judge |\n|---|---|---|---|---|---|---|\n");
    let row = |md: &mut String, name: &str, g: &GroupSummary| {
        if let Some(s) = &g.selections {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                g.cases,
                interval(&s.first),
                interval(&s.last),
                interval(&s.service),
                interval(&s.oracle),
                rho(g.spearman_thinker_judge)
            );
        }
    };
    let all = GroupSummary {
        cases: summary.cases,
        selections: summary.selections,
        spearman_thinker_judge: summary.spearman_thinker_judge,
    };
    row(&mut md, "all", &all);
    for (group, g) in &summary.by_group {
        row(&mut md, if group.is_empty() { "(none)" } else { group }, g);
    }
    let _ = writeln!(
        md,
        "\n## Cost\n\nEditor calls per point of O over the first turn: {}; cost per point: {}.\nVerifier–judge ρ: {}.",
        summary
            .editor_calls_per_point
            .map_or_else(|| "n/a (no gain)".into(), |v| format!("{v:.2}")),
        summary
            .cost_per_point
            .map_or_else(|| "n/a (no gain)".into(), |v| format!("{v:.4} {}", summary.currency)),
        rho(summary.spearman_verifier_judge)
    );
    let mut worse: Vec<(&CaseRecord, f64)> = cases
        .iter()
        .filter_map(|c| {
            let s = c.selections()?;
            Some((c, s.service - s.first)).filter(|(_, d)| *d < 0.0)
        })
        .collect();
    worse.sort_by(|a, b| a.1.total_cmp(&b.1));
    if !worse.is_empty() {
        md.push_str("\n## Cases the service made worse than turn 1\n\n| case | job | O change |\n|---|---|---|\n");
        for (case, change) in worse.iter().take(10) {
            let _ = writeln!(md, "| {} | {} | {change:+.2} |", case.id, case.job_id);
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(index: u32, thinker: f64, o: f64) -> TurnRecord {
        TurnRecord {
            index,
            instruction: format!("i{index}"),
            thinker: Scores {
                semantic: Some(thinker),
                quality: Some(thinker),
                overall: Some(thinker),
            },
            verifier: None,
            judge: JudgeScores { sc: o, pq: o, o },
            editor_ms: 1,
            thinker_ms: Some(1),
            candidates: vec![],
        }
    }

    fn case(id: &str, group: &str, selected: u32, turns: Vec<TurnRecord>) -> CaseRecord {
        CaseRecord {
            id: id.into(),
            group: Some(group.into()),
            language: None,
            job_id: format!("job-{id}"),
            status: "succeeded".into(),
            error: None,
            selected_turn: Some(selected),
            editor_calls: turns.len() as u64,
            cost: 0.1 * turns.len() as f64,
            currency: "EUR".into(),
            turns,
        }
    }

    #[test]
    fn selections_and_turn_means_follow_their_rules() {
        let cases = vec![
            case(
                "a",
                "g1",
                2,
                vec![turn(1, 4.0, 4.0), turn(2, 6.0, 7.0), turn(3, 5.0, 5.0)],
            ),
            case("b", "g2", 1, vec![turn(1, 8.0, 6.0)]),
        ];
        let s = cases[0].selections().unwrap();
        assert_eq!((s.first, s.last, s.service, s.oracle), (4.0, 5.0, 7.0, 7.0));
        let summary = summarize(&cases);
        assert_eq!(summary.cases, 2);
        assert_eq!(summary.by_turn[&1].mean, 5.0);
        assert_eq!(summary.by_turn[&2].n, 1);
        let sel = summary.selections.unwrap();
        assert_eq!(
            (sel.first.mean, sel.service.mean, sel.oracle.mean),
            (5.0, 6.5, 6.5)
        );
        assert_eq!(summary.editor_calls, 4);
        // 4 calls over 2 cases, 1.5 points gained: 2 / 1.5 calls a point.
        assert!((summary.editor_calls_per_point.unwrap() - 2.0 / 1.5).abs() < 1e-12);
        assert_eq!(summary.by_group.len(), 2);
        assert_eq!(summary.by_group["g2"].cases, 1);
        let md = markdown(&summary, &cases);
        assert!(md.contains("| all | 2 |"), "{md}");
    }
}
