//! Pure statistics for the evaluation report: confidence intervals of a
//! mean (Student's t and percentile bootstrap), Spearman's rank correlation
//! and a seeded, proportional stratified sample.
//!
//! Nothing here does IO; everything that draws random numbers takes a seed
//! and is deterministic for it (`rand::rngs::StdRng::seed_from_u64`).
//! Inputs are expected to be finite; NaN is ordered with [`f64::total_cmp`]
//! wherever values are sorted, so results stay deterministic but are not
//! meaningful for NaN input.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A point estimate with a two-sided 95 % interval around it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The sample mean.
    pub mean: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
    /// Number of values the estimate is based on.
    pub n: usize,
}

/// Two-sided 95 % critical values of Student's t (the 0.975 quantile) for
/// 1..=30 degrees of freedom, index `df - 1` (standard tables, six decimals).
const T_975_SMALL: [f64; 30] = [
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
];

/// 0.975 quantiles of Student's t for larger degrees of freedom, `(df, t)`.
const T_975_LARGE: [(usize, f64); 4] = [
    (30, 2.042272),
    (40, 2.021075),
    (60, 2.000298),
    (120, 1.979930),
];

/// 0.975 quantile of the standard normal distribution (t with df = ∞).
const Z_975: f64 = 1.959964;

/// The 0.975 quantile of Student's t distribution with `df` degrees of
/// freedom, i.e. the critical value of a two-sided 95 % interval.
///
/// Exact table values for df 1..=30, 40, 60 and 120. Between 30, 40, 60,
/// 120 and ∞ (1.959964) the value is interpolated linearly in `1/df`
/// (harmonic interpolation, the usual way to read t tables; error below
/// 1e-4, e.g. df 35 gives 2.030159 against the exact 2.030108). `df = 0`
/// has no t distribution and returns `f64::INFINITY`.
pub fn t_quantile_975(df: usize) -> f64 {
    match df {
        0 => f64::INFINITY,
        1..=30 => T_975_SMALL[df - 1],
        _ => {
            for pair in T_975_LARGE.windows(2) {
                let (d0, t0) = pair[0];
                let (d1, t1) = pair[1];
                if df <= d1 {
                    let (x0, x1, x) = (1.0 / d0 as f64, 1.0 / d1 as f64, 1.0 / df as f64);
                    return t1 + (t0 - t1) * (x - x1) / (x0 - x1);
                }
            }
            // Between 120 and ∞: 1/df goes from 1/120 to 0.
            let (d0, t0) = T_975_LARGE[T_975_LARGE.len() - 1];
            Z_975 + (t0 - Z_975) * (d0 as f64 / df as f64)
        }
    }
}

/// Arithmetic mean; `None` for an empty slice.
fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// Mean of `values` with a 95 % confidence interval of the mean from
/// Student's t distribution with `n − 1` degrees of freedom:
/// `mean ± t(n−1) · s / √n`, where `s` is the sample standard deviation
/// (divisor `n − 1`) and `t` comes from [`t_quantile_975`].
///
/// One value gives `lo = hi = mean` (no spread can be estimated); an empty
/// slice gives `None`.
pub fn mean_ci95(values: &[f64]) -> Option<Interval> {
    let n = values.len();
    let m = mean(values)?;
    if n == 1 {
        return Some(Interval {
            mean: m,
            lo: m,
            hi: m,
            n,
        });
    }
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    let half = t_quantile_975(n - 1) * var.sqrt() / (n as f64).sqrt();
    Some(Interval {
        mean: m,
        lo: m - half,
        hi: m + half,
        n,
    })
}

/// Average ranks (1-based) of `values`: tied values all get the mean of the
/// ranks they span, e.g. `[10, 20, 20, 30]` → `[1, 2.5, 2.5, 4]`.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Pearson correlation; `None` when either side has zero variance.
fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ma, mb) = (mean(a)?, mean(b)?);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return None;
    }
    Some((sab / (saa * sbb).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rank correlation of paired samples `a` and `b`: the Pearson
/// correlation of their average ranks (ties share the mean of the ranks
/// they span), so it is exact with ties, unlike the `1 − 6Σd²/(n(n²−1))`
/// shortcut.
///
/// `None` when the lengths differ, fewer than two pairs are given, or
/// either side is constant (zero variance of ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// The `p`-th percentile (`p` in 0..=100, clamped) of an ascending `sorted`
/// slice, interpolating linearly between closest ranks: position
/// `p/100 · (len − 1)` (0-based), as numpy's default / R's type 7.
/// `percentile(s, 0)` is the minimum, `percentile(s, 100)` the maximum.
/// An empty slice gives `f64::NAN`. The slice is not checked for order.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lower = pos.floor() as usize;
    let upper = pos.ceil() as usize;
    let frac = pos - lower as f64;
    sorted[lower] + (sorted[upper] - sorted[lower]) * frac
}

/// Percentile bootstrap of the mean: draws `iterations` resamples of
/// `values` (same size, with replacement, from `StdRng::seed_from_u64(seed)`),
/// takes each resample's mean, and reports the 2.5th and 97.5th
/// [`percentile`]s of those means as `lo` and `hi`. `mean` is the mean of
/// the original values and `n` their count.
///
/// Deterministic for a seed. `None` for an empty slice or zero iterations.
/// The percentile interval is not forced to contain `mean` (for very skewed
/// data it may not).
pub fn bootstrap_mean_ci95(values: &[f64], iterations: usize, seed: u64) -> Option<Interval> {
    let m = mean(values)?;
    if iterations == 0 {
        return None;
    }
    let n = values.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..iterations)
        .map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Interval {
        mean: m,
        lo: percentile(&means, 2.5),
        hi: percentile(&means, 97.5),
        n,
    })
}

/// How many items each group gets when `n` items are drawn from groups of
/// the given `sizes` (all ≥ 1, `n` < total). See [`stratified_sample`] for
/// the rule. Returns one count per group, in the order of `sizes`.
fn allocate(sizes: &[usize], n: usize) -> Vec<usize> {
    let mut counts = vec![0usize; sizes.len()];
    // Groups still to be apportioned proportionally.
    let mut open: Vec<usize> = (0..sizes.len()).collect();
    let mut left = n;
    if n >= sizes.len() {
        // At-least-one rule: a group whose proportional share of what is
        // left is below one item gets exactly one; repeat, since fixing
        // groups lowers the others' shares.
        loop {
            let total: usize = open.iter().map(|&g| sizes[g]).sum();
            // share < 1  ⇔  left · size < total
            let (small, rest): (Vec<usize>, Vec<usize>) =
                open.iter().partition(|&&g| left * sizes[g] < total);
            if small.is_empty() {
                break;
            }
            for &g in &small {
                counts[g] = 1;
            }
            left -= small.len();
            open = rest;
        }
    }
    // Largest remainder (Hamilton) over the open groups, in exact integer
    // arithmetic: quota = left · size / total.
    let total: usize = open.iter().map(|&g| sizes[g]).sum();
    if total == 0 {
        return counts;
    }
    let mut given = 0;
    for &g in &open {
        counts[g] = left * sizes[g] / total;
        given += counts[g];
    }
    // Remainders share the denominator `total`, so compare numerators;
    // ties go to the larger group, then the group seen first.
    let mut by_remainder = open.clone();
    by_remainder.sort_by(|&x, &y| {
        let (rx, ry) = (left * sizes[x] % total, left * sizes[y] % total);
        ry.cmp(&rx).then(sizes[y].cmp(&sizes[x])).then(x.cmp(&y))
    });
    for &g in by_remainder.iter().take(left - given) {
        counts[g] += 1;
    }
    counts
}

/// Picks `n` of `items` spread across groups (`group_of`) in proportion to
/// the groups' sizes, and returns them in their original order.
///
/// * `n >= items.len()` returns all items; `n == 0` returns none.
/// * Groups are ordered by first appearance in `items` (for tie-breaks and
///   for the order in which groups draw from the generator).
/// * Allocation, when `n` is at least the number of groups: every group
///   whose proportional share `left · size / total` is below one item gets
///   exactly one, and that is repeated on the remaining groups and items
///   until every remaining share is at least one; the items left are then
///   shared among the remaining groups by largest remainder: each gets the
///   floor of its share, and the leftover items go one each to the largest
///   fractional parts (ties: larger group first, then first seen). So the
///   total is exactly `n`, every group gets at least one, and no group gets
///   more than it has. Example: groups of 6, 3 and 1 with `n = 5`: the
///   single item's share is 0.5 → it gets 1; the other 4 go to groups of 6
///   and 3 with shares 2.67 and 1.33 → 2 + 1, plus the leftover one to the
///   larger remainder (0.67) → 3, 1, 1.
/// * When `n` is smaller than the number of groups, plain largest
///   remainder on all groups is used, so some groups get none (groups of
///   6, 3, 1 with `n = 2`: shares 1.2, 0.6, 0.2 → 1, 1, 0).
/// * Within a group the items are chosen uniformly at random without
///   replacement from one `StdRng::seed_from_u64(seed)`, deterministic for
///   a seed.
pub fn stratified_sample<T: Clone>(
    items: &[T],
    group_of: impl Fn(&T) -> String,
    n: usize,
    seed: u64,
) -> Vec<T> {
    if n >= items.len() {
        return items.to_vec();
    }
    if n == 0 {
        return Vec::new();
    }
    let mut index_of_group: HashMap<String, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let g = *index_of_group.entry(group_of(item)).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[g].push(i);
    }
    let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
    let counts = allocate(&sizes, n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    for (group, &count) in members.iter().zip(&counts) {
        let picks = rand::seq::index::sample(&mut rng, group.len(), count);
        chosen.extend(picks.iter().map(|k| group[k]));
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| items[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    // ---- t quantiles --------------------------------------------------

    #[test]
    fn t_quantile_table_and_interpolation() {
        // Table values (standard t tables / scipy.stats.t.ppf(0.975, df)).
        assert_eq!(t_quantile_975(1), 12.706205);
        assert_eq!(t_quantile_975(4), 2.776445);
        assert_eq!(t_quantile_975(30), 2.042272);
        assert!(close(t_quantile_975(40), 2.021075, 1e-12));
        assert!(close(t_quantile_975(60), 2.000298, 1e-12));
        assert!(close(t_quantile_975(120), 1.979930, 1e-12));
        // df 35, harmonic interpolation between 30 and 40:
        // w = (1/30 − 1/35)/(1/30 − 1/40) = 4/7;
        // 2.042272 + (2.021075 − 2.042272)·4/7 = 2.0301594; exact 2.030108.
        assert!(close(t_quantile_975(35), 2.0301594, 1e-6));
        assert!(close(t_quantile_975(35), 2.030108, 1e-4));
        // df 1000: 1.959964 + (1.979930 − 1.959964)·120/1000 = 1.9623599;
        // exact 1.962339.
        assert!(close(t_quantile_975(1000), 1.9623599, 1e-6));
        assert!(close(t_quantile_975(1000), 1.962339, 1e-4));
        // Monotone decreasing towards the normal quantile.
        let mut prev = f64::INFINITY;
        for df in 1..2000 {
            let t = t_quantile_975(df);
            assert!(t < prev && t > Z_975, "df {df}: {t}");
            prev = t;
        }
        assert_eq!(t_quantile_975(0), f64::INFINITY);
    }

    // ---- mean_ci95 ----------------------------------------------------

    #[test]
    fn mean_ci95_one_to_five() {
        // mean 3; s² = (4+1+0+1+4)/4 = 2.5, s = 1.5811388;
        // half = t(4) · s/√5 = 2.776445 · 0.7071068 = 1.9632432.
        let ci = mean_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(ci.n, 5);
        assert!(close(ci.mean, 3.0, 1e-12));
        assert!(close(ci.lo, 3.0 - 1.963243, 1e-6), "{ci:?}");
        assert!(close(ci.hi, 3.0 + 1.963243, 1e-6), "{ci:?}");
    }

    #[test]
    fn mean_ci95_two_values() {
        // [0, 2]: mean 1, s = √2, half = 12.706205 · √2/√2 = 12.706205.
        let ci = mean_ci95(&[0.0, 2.0]).unwrap();
        assert!(close(ci.lo, 1.0 - 12.706205, 1e-9));
        assert!(close(ci.hi, 1.0 + 12.706205, 1e-9));
    }

    #[test]
    fn mean_ci95_single_value() {
        let ci = mean_ci95(&[7.5]).unwrap();
        assert_eq!(
            ci,
            Interval {
                mean: 7.5,
                lo: 7.5,
                hi: 7.5,
                n: 1
            }
        );
    }

    #[test]
    fn mean_ci95_empty() {
        assert_eq!(mean_ci95(&[]), None);
    }

    #[test]
    fn mean_ci95_constant_values_have_zero_width() {
        let ci = mean_ci95(&[4.0; 10]).unwrap();
        assert_eq!((ci.lo, ci.mean, ci.hi), (4.0, 4.0, 4.0));
    }

    #[test]
    fn interval_serializes_with_field_names() {
        let ci = Interval {
            mean: 1.5,
            lo: 1.0,
            hi: 2.0,
            n: 3,
        };
        let json = serde_json::to_value(ci).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mean": 1.5, "lo": 1.0, "hi": 2.0, "n": 3})
        );
    }

    // ---- spearman -----------------------------------------------------

    #[test]
    fn spearman_monotone_is_one() {
        // Monotone but non-linear: ranks are identical → ρ = 1.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [1.0, 8.0, 27.0, 64.0, 125.0];
        assert!(close(spearman(&a, &b).unwrap(), 1.0, 1e-12));
    }

    #[test]
    fn spearman_reversed_is_minus_one() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [10.0, 7.0, 3.0, 0.5, -2.0];
        assert!(close(spearman(&a, &b).unwrap(), -1.0, 1e-12));
    }

    #[test]
    fn spearman_with_ties_matches_hand_computation() {
        // a = [1, 2, 2, 3] → ranks [1, 2.5, 2.5, 4]; b = [1, 3, 2, 4] → [1, 3, 2, 4].
        // Both rank means 2.5; deviations da = [−1.5, 0, 0, 1.5],
        // db = [−1.5, 0.5, −0.5, 1.5].
        // Σda·db = 2.25 + 2.25 = 4.5; Σda² = 4.5; Σdb² = 5.
        // ρ = 4.5 / √(4.5 · 5) = 4.5 / √22.5 = √0.9 = 0.9486833.
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!(close(rho, 0.9_f64.sqrt(), 1e-12), "{rho}");
        assert!(close(rho, 0.9486833, 1e-7));
    }

    #[test]
    fn spearman_without_ties_matches_textbook_formula() {
        // No ties: ρ = 1 − 6Σd²/(n(n²−1)). a ranks [1,2,3,4,5],
        // b = [2, 1, 4, 3, 5] ranks [2,1,4,3,5]; d² = 1+1+1+1+0 = 4;
        // ρ = 1 − 24/120 = 0.8.
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap();
        assert!(close(rho, 0.8, 1e-12), "{rho}");
    }

    #[test]
    fn average_ranks_of_ties() {
        assert_eq!(
            average_ranks(&[30.0, 10.0, 20.0, 20.0]),
            vec![4.0, 1.0, 2.5, 2.5]
        );
        assert_eq!(average_ranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn spearman_none_cases() {
        // zero variance on one side
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), None);
        assert_eq!(spearman(&[2.0, 2.0], &[1.0, 3.0]), None);
        // lengths differ
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 2.0]), None);
        // fewer than two pairs
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert_eq!(spearman(&[], &[]), None);
    }

    // ---- percentile ---------------------------------------------------

    #[test]
    fn percentile_interpolates_linearly() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 100.0), 5.0);
        assert_eq!(percentile(&s, 50.0), 3.0);
        // position 0.25 · 4 = 1 → 2; 0.1 · 4 = 0.4 → 1.4 (numpy: 1.4).
        assert_eq!(percentile(&s, 25.0), 2.0);
        assert!(close(percentile(&s, 10.0), 1.4, 1e-12));
        // [10, 20]: 2.5th percentile at position 0.025 → 10.25.
        assert!(close(percentile(&[10.0, 20.0], 2.5), 10.25, 1e-12));
        // clamped
        assert_eq!(percentile(&s, -5.0), 1.0);
        assert_eq!(percentile(&s, 150.0), 5.0);
        assert_eq!(percentile(&[7.0], 37.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    // ---- bootstrap ----------------------------------------------------

    fn spread_values(n: usize) -> Vec<f64> {
        // 1..=10 repeated: mean 5.5, sd ≈ 2.87 per value.
        (0..n).map(|i| (i % 10 + 1) as f64).collect()
    }

    #[test]
    fn bootstrap_is_deterministic_for_a_seed() {
        let v = spread_values(30);
        let a = bootstrap_mean_ci95(&v, 2000, 42).unwrap();
        let b = bootstrap_mean_ci95(&v, 2000, 42).unwrap();
        assert_eq!(a, b);
        let c = bootstrap_mean_ci95(&v, 2000, 43).unwrap();
        assert_eq!(c.mean, a.mean);
        assert_ne!((a.lo, a.hi), (c.lo, c.hi));
    }

    #[test]
    fn bootstrap_interval_contains_mean_and_is_close_to_t_interval() {
        let v = spread_values(40);
        let boot = bootstrap_mean_ci95(&v, 4000, 7).unwrap();
        assert_eq!(boot.n, 40);
        assert!(close(boot.mean, 5.5, 1e-12));
        assert!(boot.lo < boot.mean && boot.mean < boot.hi, "{boot:?}");
        // The t interval's half-width: 2.022691 · 2.9011 / √40 ≈ 0.93;
        // the bootstrap's should be in the same range.
        let t = mean_ci95(&v).unwrap();
        let (bw, tw) = (boot.hi - boot.lo, t.hi - t.lo);
        assert!(bw > 0.7 * tw && bw < 1.3 * tw, "boot {bw} vs t {tw}");
    }

    #[test]
    fn bootstrap_width_shrinks_with_more_data() {
        // Same distribution, 10× the data → width about 1/√10 as large.
        let small = bootstrap_mean_ci95(&spread_values(10), 2000, 1).unwrap();
        let large = bootstrap_mean_ci95(&spread_values(100), 2000, 1).unwrap();
        let (ws, wl) = (small.hi - small.lo, large.hi - large.lo);
        assert!(wl < 0.5 * ws, "small {ws}, large {wl}");
        assert!(large.lo <= 5.5 && 5.5 <= large.hi);
    }

    #[test]
    fn bootstrap_degenerate_inputs() {
        assert_eq!(bootstrap_mean_ci95(&[], 1000, 0), None);
        assert_eq!(bootstrap_mean_ci95(&[1.0, 2.0], 0, 0), None);
        let one = bootstrap_mean_ci95(&[3.25], 100, 9).unwrap();
        assert_eq!(
            one,
            Interval {
                mean: 3.25,
                lo: 3.25,
                hi: 3.25,
                n: 1
            }
        );
    }

    // ---- stratified_sample --------------------------------------------

    /// Items `(index, group)`: groups of 6 "a", 3 "b", 1 "c", interleaved.
    fn grouped_items() -> Vec<(usize, String)> {
        let groups = ["a", "b", "a", "a", "c", "b", "a", "a", "b", "a"];
        groups
            .iter()
            .enumerate()
            .map(|(i, g)| (i, g.to_string()))
            .collect()
    }

    fn count(sample: &[(usize, String)], group: &str) -> usize {
        sample.iter().filter(|(_, g)| g == group).count()
    }

    #[test]
    fn allocation_rule_by_hand() {
        // 6, 3, 1 and n = 5: share of "c" = 5·1/10 = 0.5 < 1 → 1;
        // the other 4 over 9 items: 4·6/9 = 2.67, 4·3/9 = 1.33 → 2, 1,
        // leftover 1 to the larger remainder (0.67, group of 6) → 3, 1, 1.
        assert_eq!(allocate(&[6, 3, 1], 5), vec![3, 1, 1]);
        // n = 3 (= number of groups): 0.5 share "c" → 1; 2 over 9:
        // 1.33, 0.67 < 1 → "b" fixed at 1 too; the last 1 goes to "a".
        assert_eq!(allocate(&[6, 3, 1], 3), vec![1, 1, 1]);
        // n = 2 < 3 groups: plain largest remainder: 1.2, 0.6, 0.2 →
        // floors 1, 0, 0, leftover to the 0.6 → 1, 1, 0.
        assert_eq!(allocate(&[6, 3, 1], 2), vec![1, 1, 0]);
        // n = 8: shares 4.8, 2.4, 0.8 → "c" fixed at 1; 7 over 9:
        // 4.67, 2.33 → 4, 2 + leftover to 0.67 → 5, 2, 1.
        assert_eq!(allocate(&[6, 3, 1], 8), vec![5, 2, 1]);
        // Tie on remainders: 2, 2 with n = 1 < groups: 0.5, 0.5 → first seen.
        assert_eq!(allocate(&[2, 2], 1), vec![1, 0]);
        // Tie on remainders goes to the larger group: sizes 1, 5, 1, 1
        // (total 8), n = 2 < 4 groups: shares 0.25, 1.25, 0.25, 0.25 →
        // floors 0, 1, 0, 0; all remainders 0.25, the group of 5 wins.
        assert_eq!(allocate(&[1, 5, 1, 1], 2), vec![0, 2, 0, 0]);
    }

    #[test]
    fn allocation_at_least_one_is_applied_repeatedly() {
        // sizes 100, 12 and eight singletons (total 120), n = 10:
        // round 1 shares: 8.33, 1.0, 0.083×8 → the eight singletons fixed;
        // round 2: 2 left over 112: 1.79, 0.21 → the 12-group fixed;
        // the last 1 goes to the 100-group → 1, 1, 1×8.
        let mut sizes = vec![100, 12];
        sizes.extend([1; 8]);
        assert_eq!(allocate(&sizes, 10), vec![1; 10]);
    }

    #[test]
    fn allocation_invariants_for_every_n() {
        let sizes = [6, 3, 1, 7, 2];
        let total: usize = sizes.iter().sum();
        for n in 0..total {
            let counts = allocate(&sizes, n);
            assert_eq!(counts.iter().sum::<usize>(), n, "n {n}: {counts:?}");
            for (c, s) in counts.iter().zip(&sizes) {
                assert!(c <= s, "n {n}: {counts:?}");
                if n >= sizes.len() {
                    assert!(*c >= 1, "n {n}: {counts:?}");
                }
            }
        }
    }

    #[test]
    fn stratified_sample_proportions() {
        let items = grouped_items();
        for seed in 0..20 {
            let s = stratified_sample(&items, |(_, g)| g.clone(), 5, seed);
            assert_eq!(s.len(), 5);
            assert_eq!((count(&s, "a"), count(&s, "b"), count(&s, "c")), (3, 1, 1));
        }
    }

    #[test]
    fn stratified_sample_preserves_original_order() {
        let items = grouped_items();
        for seed in 0..20 {
            let s = stratified_sample(&items, |(_, g)| g.clone(), 6, seed);
            assert!(s.windows(2).all(|w| w[0].0 < w[1].0), "{s:?}");
            // Every picked item is the original one at that index.
            for (i, g) in &s {
                assert_eq!(&items[*i].1, g);
            }
        }
    }

    #[test]
    fn stratified_sample_is_deterministic_for_a_seed() {
        let items: Vec<(usize, String)> = (0..200).map(|i| (i, format!("g{}", i % 7))).collect();
        let a = stratified_sample(&items, |(_, g)| g.clone(), 30, 11);
        let b = stratified_sample(&items, |(_, g)| g.clone(), 30, 11);
        assert_eq!(a, b);
        // Other seeds pick other items (at least one of several differs).
        assert!((12..17).any(|seed| stratified_sample(&items, |(_, g)| g.clone(), 30, seed) != a));
    }

    #[test]
    fn stratified_sample_n_at_least_len_returns_all() {
        let items = grouped_items();
        assert_eq!(stratified_sample(&items, |(_, g)| g.clone(), 10, 3), items);
        assert_eq!(stratified_sample(&items, |(_, g)| g.clone(), 99, 3), items);
        assert!(stratified_sample(&items, |(_, g)| g.clone(), 0, 3).is_empty());
        let empty: Vec<(usize, String)> = Vec::new();
        assert!(stratified_sample(&empty, |(_, g)| g.clone(), 5, 3).is_empty());
    }

    #[test]
    fn stratified_sample_fewer_than_groups() {
        // n = 2 < 3 groups → 1 "a", 1 "b", 0 "c" (shares 1.2, 0.6, 0.2).
        let s = stratified_sample(&grouped_items(), |(_, g)| g.clone(), 2, 5);
        assert_eq!((count(&s, "a"), count(&s, "b"), count(&s, "c")), (1, 1, 0));
    }
}
