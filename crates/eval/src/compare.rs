//! The `compare` command: two runs of the same suite, case by case
//! (contract: docs/eval.md, "Comparing two runs").
//!
//! Cases are paired by id; each case's O is the judge's O of the turn the
//! service selected (the last turn when it selected none), and the paired
//! difference is B − A. The mean difference gets a percentile-bootstrap
//! 95 % interval, overall and per group, and the verdict says whether that
//! interval leaves zero out. Pairing, aggregation and the verdict
//! ([`pair`], [`compare`], [`Verdict`]) are pure; [`run`] reads the folders
//! and writes the result.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::report::CaseRecord;
use crate::stats::{bootstrap_mean_ci95, Interval};

/// Bootstrap resamples of each interval.
pub const ITERATIONS: usize = 10_000;
/// The bootstrap's seed: the same runs always give the same intervals.
pub const SEED: u64 = 0;

/// `editthinker-eval compare`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Run A: a run folder (or its `cases.jsonl`).
    pub run_a: PathBuf,
    /// Run B, compared with A (differences are B − A).
    pub run_b: PathBuf,
    /// Where to write the result as JSON.
    #[arg(long, default_value = "compare.json")]
    pub out: PathBuf,
}

/// One case judged in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedCase {
    /// The case's id.
    pub id: String,
    /// Its group (run A's; run B's when A has none).
    pub group: Option<String>,
    /// Run A's O of the case.
    pub a: f64,
    /// Run B's.
    pub b: f64,
    /// B − A.
    pub diff: f64,
}

/// Both runs' cases, paired by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pairing {
    /// Cases judged in both runs, in run A's order.
    pub paired: Vec<PairedCase>,
    /// Ids only run A has.
    pub only_in_a: Vec<String>,
    /// Ids only run B has.
    pub only_in_b: Vec<String>,
    /// Ids both runs have, left out because a run judged no turn of the
    /// case (its job failed before its first edit).
    pub unjudged: Vec<String>,
}

/// Pairs the cases of run A and run B by id.
pub fn pair(a: &[CaseRecord], b: &[CaseRecord]) -> Pairing {
    let by_id: BTreeMap<&str, &CaseRecord> = b.iter().map(|c| (c.id.as_str(), c)).collect();
    let in_a: BTreeSet<&str> = a.iter().map(|c| c.id.as_str()).collect();
    let mut pairing = Pairing::default();
    for case_a in a {
        let Some(case_b) = by_id.get(case_a.id.as_str()) else {
            pairing.only_in_a.push(case_a.id.clone());
            continue;
        };
        match (case_a.selections(), case_b.selections()) {
            (Some(sa), Some(sb)) => pairing.paired.push(PairedCase {
                id: case_a.id.clone(),
                group: case_a.group.clone().or_else(|| case_b.group.clone()),
                a: sa.service,
                b: sb.service,
                diff: sb.service - sa.service,
            }),
            _ => pairing.unjudged.push(case_a.id.clone()),
        }
    }
    pairing.only_in_b = b
        .iter()
        .filter(|c| !in_a.contains(c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    pairing
}

/// Which run the interval of B − A favours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval is above zero.
    BWins,
    /// The whole interval is below zero.
    AWins,
    /// The interval includes zero.
    NoClearWinner,
}

impl Verdict {
    /// The verdict of an interval of B − A.
    pub fn of(diff: &Interval) -> Self {
        if diff.lo > 0.0 {
            Self::BWins
        } else if diff.hi < 0.0 {
            Self::AWins
        } else {
            Self::NoClearWinner
        }
    }

    /// The one-line verdict, e.g. `B wins by +0.42 O (95 % interval
    /// [+0.10, +0.75], outside zero)`.
    pub fn line(diff: &Interval) -> String {
        let bounds = format!("[{:+.2}, {:+.2}]", diff.lo, diff.hi);
        match Self::of(diff) {
            Self::BWins => format!(
                "B wins by {:+.2} O (95 % interval {bounds}, outside zero)",
                diff.mean
            ),
            Self::AWins => format!(
                "A wins by {:+.2} O (B − A = {:+.2}, 95 % interval {bounds}, outside zero)",
                -diff.mean, diff.mean
            ),
            Self::NoClearWinner => {
                let leader = if diff.mean > 0.0 {
                    "B ahead"
                } else if diff.mean < 0.0 {
                    "A ahead"
                } else {
                    "a tie"
                };
                format!(
                    "no clear winner: B − A = {:+.2} O ({leader}), but the 95 % interval {bounds} includes 0",
                    diff.mean
                )
            }
        }
    }
}

/// The comparison of a set of paired cases (the whole run or a group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// Paired cases.
    pub cases: usize,
    /// Run A's mean O over them.
    pub mean_a: f64,
    /// Run B's.
    pub mean_b: f64,
    /// The mean of B − A with its bootstrap 95 % interval.
    pub diff: Interval,
    /// What the interval says.
    pub verdict: Verdict,
}

impl Side {
    fn of<'a>(cases: impl Iterator<Item = &'a PairedCase>) -> Option<Self> {
        let (mut a, mut b, mut diffs) = (0.0, 0.0, Vec::new());
        for case in cases {
            a += case.a;
            b += case.b;
            diffs.push(case.diff);
        }
        let diff = bootstrap_mean_ci95(&diffs, ITERATIONS, SEED)?;
        let n = diffs.len() as f64;
        Some(Self {
            cases: diffs.len(),
            mean_a: a / n,
            mean_b: b / n,
            diff,
            verdict: Verdict::of(&diff),
        })
    }
}

/// `compare.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Run A's folder.
    pub run_a: String,
    /// Run B's folder.
    pub run_b: String,
    /// All paired cases.
    pub overall: Side,
    /// Per group (`""`: cases without one).
    pub by_group: BTreeMap<String, Side>,
    /// The verdict line.
    pub verdict: String,
    /// The pairing, case by case.
    #[serde(flatten)]
    pub pairing: Pairing,
}

/// Compares the paired cases; `None` when no case is paired.
pub fn compare(run_a: &str, run_b: &str, pairing: Pairing) -> Option<Comparison> {
    let overall = Side::of(pairing.paired.iter())?;
    let groups: BTreeSet<String> = pairing
        .paired
        .iter()
        .map(|c| c.group.clone().unwrap_or_default())
        .collect();
    let by_group = groups
        .into_iter()
        .filter_map(|g| {
            let side = Side::of(
                pairing
                    .paired
                    .iter()
                    .filter(|c| c.group.as_deref().unwrap_or_default() == g),
            )?;
            Some((g, side))
        })
        .collect();
    Some(Comparison {
        run_a: run_a.to_string(),
        run_b: run_b.to_string(),
        verdict: Verdict::line(&overall.diff),
        overall,
        by_group,
        pairing,
    })
}

/// The comparison for people: the runs, the pairing, a table and the
/// verdict line last.
pub fn table(c: &Comparison) -> String {
    let mut text = format!("A = {}\nB = {}\n", c.run_a, c.run_b);
    let p = &c.pairing;
    let _ = writeln!(
        text,
        "{} cases paired; {} only in A, {} only in B, {} not judged in both (left out)\n",
        p.paired.len(),
        p.only_in_a.len(),
        p.only_in_b.len(),
        p.unjudged.len()
    );
    for (label, ids) in [
        ("only in A", &p.only_in_a),
        ("only in B", &p.only_in_b),
        ("not judged in both", &p.unjudged),
    ] {
        if !ids.is_empty() {
            let _ = writeln!(text, "{label}: {}", ids.join(", "));
        }
    }
    let _ = writeln!(
        text,
        "{:<24} {:>6} {:>7} {:>7} {:>7}  {:<18} winner",
        "group", "cases", "O (A)", "O (B)", "B − A", "95 % interval"
    );
    let row = |text: &mut String, name: &str, s: &Side| {
        let winner = match s.verdict {
            Verdict::BWins => "B",
            Verdict::AWins => "A",
            Verdict::NoClearWinner => "-",
        };
        let _ = writeln!(
            text,
            "{name:<24} {:>6} {:>7.2} {:>7.2} {:>+7.2}  {:<18} {winner}",
            s.cases,
            s.mean_a,
            s.mean_b,
            s.diff.mean,
            format!("[{:+.2}, {:+.2}]", s.diff.lo, s.diff.hi)
        );
    };
    row(&mut text, "all", &c.overall);
    for (group, side) in &c.by_group {
        row(
            &mut text,
            if group.is_empty() { "(none)" } else { group },
            side,
        );
    }
    let _ = writeln!(text, "\n{}", c.verdict);
    text
}

/// A run's `cases.jsonl` (`path` is the run folder or the file itself).
pub fn load_cases(path: &Path) -> anyhow::Result<Vec<CaseRecord>> {
    let file = if path.is_dir() {
        path.join("cases.jsonl")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a case record", file.display(), i + 1))
        })
        .collect()
}

/// Runs `compare`: prints the table and the verdict, writes the JSON.
pub fn run(args: &CompareArgs) -> anyhow::Result<Comparison> {
    let a = load_cases(&args.run_a)?;
    let b = load_cases(&args.run_b)?;
    let (name_a, name_b) = (args.run_a.display(), args.run_b.display());
    let Some(comparison) = compare(&name_a.to_string(), &name_b.to_string(), pair(&a, &b)) else {
        bail!("no case is judged in both {name_a} and {name_b}");
    };
    print!("{}", table(&comparison));
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&comparison)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("comparison written to {}", args.out.display());
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A case whose turns have the judge O values `os`.
    fn case(id: &str, group: Option<&str>, selected: Option<u32>, os: &[f64]) -> CaseRecord {
        let turns: Vec<_> = (1..)
            .zip(os)
            .map(|(index, o)| {
                json!({"index": index, "instruction": "edit", "verifier": null,
                   "thinker": {"semantic": null, "quality": null, "overall": null},
                   "judge": {"sc": o, "pq": o, "o": o}, "editor_ms": 0, "thinker_ms": null})
            })
            .collect();
        serde_json::from_value(json!({
            "id": id, "group": group, "language": null, "job_id": format!("job-{id}"),
            "status": "succeeded", "error": null, "selected_turn": selected,
            "editor_calls": os.len(), "cost": 0.0, "currency": "USD", "turns": turns,
        }))
        .unwrap()
    }

    fn interval(mean: f64, lo: f64, hi: f64) -> Interval {
        Interval { mean, lo, hi, n: 5 }
    }

    #[test]
    fn pairing_uses_the_selected_turn_and_reports_the_unpaired() {
        let a = vec![
            case("x", Some("g"), Some(1), &[5.0, 7.0]),
            case("only-a", None, None, &[1.0]),
            case("failed", None, None, &[]),
            case("y", None, None, &[3.0, 4.0]),
        ];
        let b = vec![
            case("only-b", None, None, &[1.0]),
            case("y", Some("h"), Some(9), &[6.0, 2.0]),
            case("x", Some("other"), Some(2), &[1.0, 8.0]),
            case("failed", None, None, &[4.0]),
        ];
        let p = pair(&a, &b);
        assert_eq!(p.only_in_a, vec!["only-a"]);
        assert_eq!(p.only_in_b, vec!["only-b"]);
        assert_eq!(p.unjudged, vec!["failed"]);
        // x: A selected turn 1 (5), B turn 2 (8). y: A selected none, so
        // its last turn (4); B's selection 9 was not judged: its last (2).
        let got: Vec<_> = p
            .paired
            .iter()
            .map(|c| (c.id.as_str(), c.group.as_deref(), c.a, c.b, c.diff))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x", Some("g"), 5.0, 8.0, 3.0),
                ("y", Some("h"), 4.0, 2.0, -2.0)
            ]
        );
    }

    #[test]
    fn the_verdict_follows_the_interval() {
        let b = interval(0.42, 0.10, 0.75);
        assert_eq!(Verdict::of(&b), Verdict::BWins);
        assert_eq!(
            Verdict::line(&b),
            "B wins by +0.42 O (95 % interval [+0.10, +0.75], outside zero)"
        );
        let a = interval(-0.5, -0.9, -0.1);
        assert_eq!(Verdict::of(&a), Verdict::AWins);
        assert!(Verdict::line(&a).starts_with("A wins by +0.50 O"));
        let none = interval(0.05, -0.2, 0.31);
        assert_eq!(Verdict::of(&none), Verdict::NoClearWinner);
        let line = Verdict::line(&none);
        assert!(line.starts_with("no clear winner"), "{line}");
        assert!(
            line.contains("B ahead") && line.ends_with("includes 0"),
            "{line}"
        );
        // An interval touching zero does not leave it out.
        assert_eq!(
            Verdict::of(&interval(0.1, 0.0, 0.2)),
            Verdict::NoClearWinner
        );
        assert!(Verdict::line(&interval(0.0, 0.0, 0.0)).contains("a tie"));
    }

    #[test]
    fn groups_get_their_own_intervals() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, d) in [1.0, 1.5, 2.0, 1.0, 1.5].into_iter().enumerate() {
            a.push(case(&format!("w{i}"), Some("win"), None, &[4.0]));
            b.push(case(&format!("w{i}"), Some("win"), None, &[4.0 + d]));
        }
        for (i, d) in [0.5, -0.5, 0.3, -0.3].into_iter().enumerate() {
            a.push(case(&format!("t{i}"), None, None, &[5.0]));
            b.push(case(&format!("t{i}"), None, None, &[5.0 + d]));
        }
        let c = compare("a", "b", pair(&a, &b)).unwrap();
        assert_eq!(c.overall.cases, 9);
        assert!((c.overall.diff.mean - 7.0 / 9.0).abs() < 1e-12);
        assert_eq!(c.overall.verdict, Verdict::BWins);
        assert_eq!(c.by_group["win"].verdict, Verdict::BWins);
        assert_eq!(c.by_group["win"].mean_a, 4.0);
        assert!(c.by_group[""].diff.mean.abs() < 1e-12);
        assert_eq!(c.by_group[""].verdict, Verdict::NoClearWinner);
        assert!(c.verdict.starts_with("B wins"));
        let text = table(&c);
        assert!(text.contains("(none)") && text.trim_end().ends_with(&c.verdict));
        // Deterministic: the same runs give the same intervals.
        assert_eq!(compare("a", "b", pair(&a, &b)).unwrap(), c);
    }

    #[test]
    fn nothing_paired_is_no_comparison() {
        let a = vec![case("x", None, None, &[1.0])];
        assert!(compare("a", "b", pair(&a, &[])).is_none());
    }
}
