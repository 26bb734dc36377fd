//! The request body every webhook carries.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Field order is the declaration order, so bodies read the same way the
/// Standard Webhooks examples do.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: &'a serde_json::Value,
}

/// The JSON body `{"type": kind, "timestamp": "<RFC 3339>", "data": data}`.
///
/// `timestamp` is when the event happened, not when it is sent: it stays the
/// same on every retry (the attempt time goes in the `webhook-timestamp`
/// header instead). Built once per attempt and signed as these exact bytes.
pub fn envelope(kind: &str, timestamp: DateTime<Utc>, data: &serde_json::Value) -> Vec<u8> {
    let body = Envelope {
        kind,
        timestamp: timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        data,
    };
    // A struct of strings and a `Value` has only string keys, the one thing
    // serde_json can fail on.
    serde_json::to_vec(&body).expect("a webhook envelope always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn envelope_has_type_timestamp_and_data_in_order() {
        let at = Utc.with_ymd_and_hms(2022, 11, 3, 20, 26, 10).unwrap()
            + chrono::Duration::microseconds(344_522);
        let body = envelope("job.succeeded", at, &json!({"job_id": "j1", "n": 2}));
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"type":"job.succeeded","timestamp":"2022-11-03T20:26:10.344522Z","data":{"job_id":"j1","n":2}}"#
        );
    }

    #[test]
    fn whole_second_timestamps_have_no_fraction_and_parse_back() {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&envelope("k", at, &json!(null))).unwrap();
        assert_eq!(body["timestamp"], "2030-01-02T03:04:05Z");
        let back: DateTime<Utc> = body["timestamp"].as_str().unwrap().parse().unwrap();
        assert_eq!(back, at);
        assert!(body["data"].is_null());
    }
}
