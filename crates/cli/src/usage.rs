//! `editthinker usage`: a tenant's usage ledger as a table (the operator's
//! view of what `GET /v1/usage` answers a tenant).

use chrono::{DateTime, NaiveDate, Utc};
use editthinker_core::Usage;
use editthinker_store::EditorUsage;

/// A date (`2026-12-01`, midnight UTC) or an RFC 3339 time.
pub fn instant(raw: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("{raw:?} is neither a date (2026-12-01) nor an RFC 3339 time"))
}

/// The report: one line per editor, then the total.
pub fn table(
    tenant: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    rows: &[EditorUsage],
    currency: &str,
) -> String {
    let total = Usage::total(rows.iter().map(|r| &r.usage), currency);
    let mut out = format!(
        "tenant {tenant}, {} to {} (UTC)\n{:<20} {:>8} {:>10} {:>8} {:>12} {:>12} {:>12}\n",
        since.format("%Y-%m-%d %H:%M"),
        until.format("%Y-%m-%d %H:%M"),
        "EDITOR",
        "EDITS",
        "EDIT S",
        "CRITIQUES",
        "TOKENS IN",
        "TOKENS OUT",
        format!("COST {}", total.currency),
    );
    let line = |name: &str, u: &Usage| {
        format!(
            "{:<20} {:>8} {:>10.1} {:>8} {:>12} {:>12} {:>12.4}\n",
            name,
            u.editor_calls,
            u.editor_seconds,
            u.thinker_calls,
            u.thinker_input_tokens,
            u.thinker_output_tokens,
            u.cost
        )
    };
    for row in rows {
        out.push_str(&line(&row.editor, &row.usage));
    }
    out.push_str(&line("total", &total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_read() {
        assert_eq!(
            instant("2026-12-01").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            instant("2026-12-01T10:30:00+01:00").unwrap().to_rfc3339(),
            "2026-12-01T09:30:00+00:00"
        );
        assert!(instant("yesterday").is_err());
    }

    #[test]
    fn the_table_sums_every_editor() {
        let usage = |calls, cost| Usage {
            editor_calls: calls,
            thinker_calls: calls,
            cost,
            ..Usage::zero("EUR")
        };
        let rows = [
            EditorUsage {
                editor: "kontext".into(),
                usage: usage(2, 0.5),
            },
            EditorUsage {
                editor: "openai".into(),
                usage: usage(3, 0.25),
            },
        ];
        let since = instant("2026-12-01").unwrap();
        let text = table(
            "acme",
            since,
            since + chrono::Duration::days(1),
            &rows,
            "USD",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("tenant acme, 2026-12-01 00:00 to 2026-12-02 00:00"));
        assert!(lines[1].ends_with("COST EUR"), "{text}");
        assert!(lines[2].starts_with("kontext"));
        let total: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(total[0], "total");
        assert_eq!(total[1], "5");
        assert_eq!(total.last(), Some(&"0.7500"));
    }
}
