//! When to try a failed delivery again.

use std::time::Duration;

/// How far the jitter moves a delay either way (±20 %), so that deliveries
/// that failed together (a receiver outage) do not all come back at once.
const JITTER: f64 = 0.2;

/// The waits between attempts of one delivery: after the n-th failed attempt
/// the caller waits `delays[n - 1]` (± jitter); when the list is used up the
/// delivery is given up as failed. A delivery therefore gets at most
/// `delays().len() + 1` attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    /// 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h, 13 h: ten attempts
    /// over 85 355 s (23 h 42 min 35 s) before jitter, so a receiver that is
    /// down for most of a day still gets the event.
    fn default() -> Self {
        let secs = [5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 13 * 3600];
        RetrySchedule {
            delays: secs.into_iter().map(Duration::from_secs).collect(),
        }
    }
}

impl RetrySchedule {
    /// A schedule from delays in seconds (as configuration gives them).
    /// Rejects an empty list and any delay that is negative, NaN, infinite
    /// or too large for a `Duration`; zero is allowed (useful in tests).
    pub fn from_seconds(secs: &[f64]) -> Result<Self, String> {
        if secs.is_empty() {
            return Err("webhook retry schedule must list at least one delay".into());
        }
        let delays = secs
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                if s < 0.0 {
                    return Err(format!(
                        "webhook retry delay #{} is negative ({s} s)",
                        i + 1
                    ));
                }
                Duration::try_from_secs_f64(s).map_err(|_| {
                    format!(
                        "webhook retry delay #{} is not a usable number of seconds ({s})",
                        i + 1
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(RetrySchedule { delays })
    }

    /// The delays, without jitter.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The sum of the delays: roughly how long after the first attempt the
    /// last one happens.
    pub fn total(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// How long to wait before the next attempt, given how many attempts have
    /// failed so far (1 after the first failure; 0 is treated as 1), or
    /// `None` when the schedule is used up and the delivery should be marked
    /// failed.
    ///
    /// `jitter` is a caller-supplied random number in [0, 1) (e.g.
    /// `rand::random::<f64>()`), taken as a parameter so this stays a pure
    /// function: 0 gives −20 %, 0.5 the exact delay, near 1 almost +20 %.
    /// Values outside [0, 1] are clamped and NaN counts as 0.5.
    pub fn next_delay(&self, failed_attempts: u32, jitter: f64) -> Option<Duration> {
        let index = usize::try_from(failed_attempts.max(1) - 1).ok()?;
        let base = *self.delays.get(index)?;
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let factor = 1.0 + JITTER * (2.0 * jitter - 1.0);
        // At most 1.2 × a valid Duration; fall back to the exact delay in the
        // (absurd) case that overflows.
        Some(Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_the_documented_one_and_about_a_day() {
        let s = RetrySchedule::default();
        let secs: Vec<u64> = s.delays().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 30, 120, 600, 1800, 3600, 10800, 21600, 46800]);
        assert_eq!(s.total(), Duration::from_secs(85_355));
    }

    #[test]
    fn next_delay_walks_the_list_then_gives_up() {
        let s = RetrySchedule::default();
        assert_eq!(s.next_delay(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(s.next_delay(2, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(s.next_delay(9, 0.5), Some(Duration::from_secs(13 * 3600)));
        assert_eq!(s.next_delay(10, 0.5), None);
        assert_eq!(s.next_delay(u32::MAX, 0.5), None);
        assert_eq!(s.next_delay(0, 0.5), s.next_delay(1, 0.5));
    }

    #[test]
    fn jitter_spans_plus_minus_twenty_percent() {
        let s = RetrySchedule::from_seconds(&[100.0]).unwrap();
        let at = |j: f64| s.next_delay(1, j).unwrap().as_secs_f64();
        assert!((at(0.0) - 80.0).abs() < 1e-9, "{}", at(0.0));
        assert!((at(0.25) - 90.0).abs() < 1e-9, "{}", at(0.25));
        assert!((at(0.999_999) - 120.0).abs() < 1e-3, "{}", at(0.999_999));
        for j in 0..100 {
            let d = at(f64::from(j) / 100.0);
            assert!((80.0..120.0).contains(&d), "jitter {j}: {d}");
        }
        // Out-of-range input stays within the band instead of panicking.
        assert!((at(-3.0) - 80.0).abs() < 1e-9);
        assert!((at(7.0) - 120.0).abs() < 1e-9);
        assert!((at(f64::NAN) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn from_seconds_validates() {
        let s = RetrySchedule::from_seconds(&[0.0, 1.5, 60.0]).unwrap();
        assert_eq!(
            s.delays(),
            [
                Duration::ZERO,
                Duration::from_millis(1500),
                Duration::from_secs(60)
            ]
        );
        assert!(RetrySchedule::from_seconds(&[])
            .unwrap_err()
            .contains("at least one"));
        assert!(RetrySchedule::from_seconds(&[1.0, -1.0])
            .unwrap_err()
            .contains("#2 is negative"));
        assert!(RetrySchedule::from_seconds(&[f64::NAN]).is_err());
        assert!(RetrySchedule::from_seconds(&[f64::INFINITY]).is_err());
        assert!(RetrySchedule::from_seconds(&[1e30]).is_err());
    }
}
