//! The Prometheus metrics every role records (docs/operations.md "Metrics"; the names
//! and labels are contract). Each crate records through the [`metrics`]
//! facade with the names defined here, so one list says what exists; the
//! binary installs the exporter and serves `/metrics`. Without an exporter
//! installed, recording costs next to nothing.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// `{route, method, status}`: HTTP requests answered by the API.
pub const HTTP_REQUESTS_TOTAL: &str = "editthinker_http_requests_total";
/// `{route, method}`: time to the response head, in seconds (histogram).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "editthinker_http_request_duration_seconds";
/// Jobs accepted by `POST /v1/jobs` (an idempotent replay is not counted).
pub const JOBS_CREATED_TOTAL: &str = "editthinker_jobs_created_total";
/// `{status, stop_reason}`: jobs that reached a terminal status.
pub const JOBS_FINISHED_TOTAL: &str = "editthinker_jobs_finished_total";
/// `{status="queued"|"running"}`: jobs in the queue (gauge, polled).
pub const QUEUE_DEPTH: &str = "editthinker_queue_depth";
/// How long the oldest due queued job has waited, in seconds (gauge, polled).
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "editthinker_queue_oldest_age_seconds";
/// `{editor}`: turns edited and durably recorded.
pub const TURNS_TOTAL: &str = "editthinker_turns_total";
/// `{editor, kind}`: one edit, retries and polls included, in seconds (histogram).
pub const EDIT_DURATION_SECONDS: &str = "editthinker_edit_duration_seconds";
/// `{thinker}`: one thinker call, in seconds (histogram).
pub const CRITIQUE_DURATION_SECONDS: &str = "editthinker_critique_duration_seconds";
/// `{provider, outcome}`: HTTP attempts to editor providers and to the
/// remote thinker (`provider="thinker"`).
pub const PROVIDER_REQUESTS_TOTAL: &str = "editthinker_provider_requests_total";
/// `{thinker, direction="prompt"|"generated"}`: tokens a thinker reported.
pub const THINKER_TOKENS_TOTAL: &str = "editthinker_thinker_tokens_total";
/// Open SSE streams in this process (gauge).
pub const SSE_STREAMS: &str = "editthinker_sse_streams";
/// Event streams handed to the event hub's writer threads (counter).
pub const SSE_HANDOFFS_TOTAL: &str = "editthinker_sse_handoffs_total";
/// Connections closed because hyper's end of a chunked body was not the
/// bytes the event hub had already written for it (counter).
pub const SSE_FRAMING_MISMATCHES_TOTAL: &str = "editthinker_sse_framing_mismatches_total";
/// `{outcome}`: webhook delivery attempts.
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "editthinker_webhook_deliveries_total";
/// `{reason}`: jobs sent back to the queue (`job.retrying` reasons).
pub const JOB_RETRIES_TOTAL: &str = "editthinker_job_retries_total";
/// `{result="found"|"unknown"}`: API keys looked up in the database (cache
/// hits and throttled requests are not lookups).
pub const AUTH_KEY_LOOKUPS_TOTAL: &str = "editthinker_auth_key_lookups_total";
/// Requests refused with 429 because their client address failed to
/// authenticate too often (`[auth] failed_auth_per_minute_per_address`).
pub const AUTH_THROTTLED_TOTAL: &str = "editthinker_auth_throttled_total";

/// 1 while this worker's last probe of its thinker succeeded, 0 while it
/// claims no jobs because the thinker did not answer (gauge; workers only).
pub const THINKER_REACHABLE: &str = "editthinker_thinker_reachable";

/// `{editor}`: editor calls that returned an image (the usage ledger's).
pub const EDITOR_CALLS_TOTAL: &str = "editthinker_editor_calls_total";
/// `{provider}`: what paid calls cost at the configured prices, in the
/// configuration's `currency`; `provider` is the editor's name for edits,
/// `thinker` or `verifier` otherwise (a gauge that only rises).
pub const COST_TOTAL: &str = "editthinker_cost_total";

/// |thinker overall − verifier overall| for each candidate both scored, on
/// 0..=10 (histogram): how often the two judges disagree.
pub const VERIFIER_GAP: &str = "editthinker_verifier_gap";

/// The `stop_reason` label of a job that finished without one (failed or
/// canceled).
pub const NO_STOP_REASON: &str = "none";

/// What an editor provider's HTTP attempt came to (`outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// A usable answer.
    Ok,
    /// A moderation or safety refusal.
    Refused,
    /// A request the provider rejects as malformed, or an unusable answer.
    Invalid,
    /// Credentials rejected.
    Auth,
    /// Not sent, or turned away before any work (connect errors, 429, 503).
    Unavailable,
    /// Sent, with no telling whether the work was done (timeouts, 5xx).
    Ambiguous,
}

impl ProviderOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Auth => "auth",
            Self::Unavailable => "unavailable",
            Self::Ambiguous => "ambiguous",
        }
    }

    /// The outcome of an attempt that failed in a way a later one may get
    /// past.
    pub fn of_failure(class: crate::FailureClass) -> Self {
        match class {
            crate::FailureClass::NotSent | crate::FailureClass::RefusedBeforeWork => {
                Self::Unavailable
            }
            crate::FailureClass::Ambiguous => Self::Ambiguous,
        }
    }

    /// The outcome a final thinker error stands for (a transient one that
    /// ends a call is an answer the thinker could not use).
    pub fn of_thinker_error(error: &crate::ThinkerError) -> Self {
        use crate::ThinkerError as E;
        match error {
            E::Transient(_) | E::Invalid(_) => Self::Invalid,
            E::Auth(_) => Self::Auth,
        }
    }

    /// The outcome an editor error stands for.
    pub fn of_error(error: &crate::EditorError) -> Self {
        use crate::EditorError as E;
        match error {
            E::Transient(_) => Self::Unavailable,
            E::Refused(_) => Self::Refused,
            E::Invalid(_) => Self::Invalid,
            E::Auth(_) => Self::Auth,
            E::Ambiguous(_) => Self::Ambiguous,
        }
    }
}

/// The `method` label of methods outside [`STANDARD_METHODS`]: a client
/// may send any token as a method, and each distinct value would otherwise
/// be a new series (issue 20, finding 3).
pub const OTHER_METHOD: &str = "other";

/// The methods of RFC 9110 and PATCH: the only `method` label values
/// besides [`OTHER_METHOD`].
pub const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The `method` label of a request method: itself when standard, else
/// [`OTHER_METHOD`]. Methods are case-sensitive (RFC 9110 §9.1), so `get`
/// is another method.
pub fn method_label(method: &str) -> &'static str {
    STANDARD_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or(OTHER_METHOD)
}

/// The `status` label of a response status: the code when it is one of
/// the classes 1xx to 5xx, else `other` (hyper accepts any code from 100
/// to 999; only our own handlers choose codes, but the label stays bounded
/// whatever they do).
pub fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    if (100..600).contains(&status) {
        status.to_string().into()
    } else {
        "other".into()
    }
}

/// Counts one answered HTTP request; `route` is the route template (never
/// the raw path, which would make a series per job). The method and the
/// status are bounded here ([`method_label`], [`status_label`]), so the
/// caller may pass what the client sent.
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    let method = method_label(method);
    counter!(HTTP_REQUESTS_TOTAL, "route" => route.to_owned(), "method" => method, "status" => status_label(status))
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.to_owned(), "method" => method)
        .record(took.as_secs_f64());
}

/// Counts one created job.
pub fn job_created() {
    counter!(JOBS_CREATED_TOTAL).increment(1);
}

/// Counts one job that reached `status` (terminal), with its stop reason
/// when it succeeded.
pub fn job_finished(status: &'static str, stop_reason: Option<&'static str>) {
    counter!(JOBS_FINISHED_TOTAL, "status" => status, "stop_reason" => stop_reason.unwrap_or(NO_STOP_REASON))
        .increment(1);
}

/// Counts one job sent back to the queue for `reason`.
pub fn job_retried(reason: &'static str) {
    counter!(JOB_RETRIES_TOTAL, "reason" => reason).increment(1);
}

/// Sets the queue gauges.
pub fn queue(queued: u64, running: u64, oldest_age: Duration) {
    gauge!(QUEUE_DEPTH, "status" => "queued").set(queued as f64);
    gauge!(QUEUE_DEPTH, "status" => "running").set(running as f64);
    gauge!(QUEUE_OLDEST_AGE_SECONDS).set(oldest_age.as_secs_f64());
}

/// Counts one durably recorded turn of `editor`.
pub fn turn_recorded(editor: &str) {
    counter!(TURNS_TOTAL, "editor" => editor.to_owned()).increment(1);
}

/// Records one edit call of `editor` (of `kind`), finished or failed.
pub fn edit_done(editor: &str, kind: &str, took: Duration) {
    histogram!(EDIT_DURATION_SECONDS, "editor" => editor.to_owned(), "kind" => kind.to_owned())
        .record(took.as_secs_f64());
}

/// Records one paid call in the ledger's metrics: `editor` is the job's
/// editor.
pub fn call_paid(call: &crate::usage::ProviderCall, editor: &str, cost: f64) {
    use crate::usage::CallKind;
    let provider = match call.kind {
        CallKind::Editor => {
            counter!(EDITOR_CALLS_TOTAL, "editor" => editor.to_owned()).increment(1);
            editor.to_owned()
        }
        kind => kind.as_str().to_owned(),
    };
    // The facade's counters hold integers and costs are fractions: a gauge
    // that only ever rises (exported with type gauge).
    gauge!(COST_TOTAL, "provider" => provider).increment(cost);
}

/// Records what this worker's last probe of its thinker found.
pub fn thinker_reachable(reachable: bool) {
    gauge!(THINKER_REACHABLE).set(if reachable { 1.0 } else { 0.0 });
}

/// Counts one webhook delivery attempt (`delivered`, `failed`, `gave_up`).
pub fn webhook_delivery(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).increment(1);
}

/// The `reason` values of [`JOB_RETRIES_TOTAL`] (`job.retrying` reasons).
pub const RETRY_REASONS: [&str; 3] = ["transient", "lease_expired", "released"];

/// The `outcome` values of [`WEBHOOK_DELIVERIES_TOTAL`].
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "gave_up"];

/// Stop reasons a succeeded job is counted with in [`JOBS_FINISHED_TOTAL`].
const SUCCESS_STOP_REASONS: [crate::StopReason; 5] = [
    crate::StopReason::Satisfied,
    crate::StopReason::MaxTurns,
    crate::StopReason::Refusal,
    crate::StopReason::InvalidRefinement,
    crate::StopReason::Deadline,
];

/// Registers every series whose label values are known in advance, at 0,
/// once the recorder is installed: dashboards and alerts then read 0, not
/// "no data", before the first stream, retry or failure. (Series labelled
/// by route, editor or provider appear with their first use.)
pub fn register_known_series() {
    counter!(JOBS_CREATED_TOTAL).increment(0);
    for stop in SUCCESS_STOP_REASONS {
        counter!(JOBS_FINISHED_TOTAL, "status" => "succeeded", "stop_reason" => stop.as_str())
            .increment(0);
    }
    for status in ["failed", "canceled"] {
        counter!(JOBS_FINISHED_TOTAL, "status" => status, "stop_reason" => NO_STOP_REASON)
            .increment(0);
    }
    for reason in RETRY_REASONS {
        counter!(JOB_RETRIES_TOTAL, "reason" => reason).increment(0);
    }
    for outcome in WEBHOOK_OUTCOMES {
        counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).increment(0);
    }
    for status in ["queued", "running"] {
        gauge!(QUEUE_DEPTH, "status" => status).increment(0.0);
    }
    gauge!(QUEUE_OLDEST_AGE_SECONDS).increment(0.0);
    gauge!(SSE_STREAMS).increment(0.0);
    auth_registered();
}

/// Registers the authentication series at 0, so a scrape shows them (and
/// rates over them work) before the first lookup or refusal.
pub fn auth_registered() {
    for result in ["found", "unknown"] {
        counter!(AUTH_KEY_LOOKUPS_TOTAL, "result" => result).increment(0);
    }
    counter!(AUTH_THROTTLED_TOTAL).increment(0);
}

/// Counts one API key looked up in the database.
pub fn auth_key_lookup(found: bool) {
    let result = if found { "found" } else { "unknown" };
    counter!(AUTH_KEY_LOOKUPS_TOTAL, "result" => result).increment(1);
}

/// Counts one request refused for its address's failed authentications.
pub fn auth_throttled() {
    counter!(AUTH_THROTTLED_TOTAL).increment(1);
}

/// Registers the SSE series at 0, so a scrape shows them (and alerts on
/// them work) before the first stream.
pub fn sse_registered() {
    gauge!(SSE_STREAMS).increment(0.0);
    counter!(SSE_HANDOFFS_TOTAL).increment(0);
    counter!(SSE_FRAMING_MISMATCHES_TOTAL).increment(0);
}

/// Counts one stream handed to the event hub's writers.
pub fn sse_handoff() {
    counter!(SSE_HANDOFFS_TOTAL).increment(1);
}

/// Counts one connection closed for a framing mismatch.
pub fn sse_framing_mismatch() {
    counter!(SSE_FRAMING_MISMATCHES_TOTAL).increment(1);
}

/// One open SSE stream: counted in [`SSE_STREAMS`] from creation to drop.
#[derive(Debug)]
pub struct OpenStream(());

impl OpenStream {
    /// Counts a new stream.
    pub fn open() -> Self {
        gauge!(SSE_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!(SSE_STREAMS).decrement(1.0);
    }
}

/// Counts one provider attempt.
pub fn provider_request(provider: &str, outcome: ProviderOutcome) {
    counter!(PROVIDER_REQUESTS_TOTAL, "provider" => provider.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
}

/// Records one thinker call, answered or failed (like an edit's duration),
/// and the tokens it reported when it answered.
pub fn critique_done(thinker: &'static str, took: Duration, tokens: Option<(u64, u64)>) {
    histogram!(CRITIQUE_DURATION_SECONDS, "thinker" => thinker).record(took.as_secs_f64());
    if let Some((prompt, generated)) = tokens {
        counter!(THINKER_TOKENS_TOTAL, "thinker" => thinker, "direction" => "prompt")
            .increment(prompt);
        counter!(THINKER_TOKENS_TOTAL, "thinker" => thinker, "direction" => "generated")
            .increment(generated);
    }
}

/// Records how far the thinker's and the verifier's overall scores of one
/// candidate are apart.
pub fn verifier_gap(thinker: f64, verifier: f64) {
    histogram!(VERIFIER_GAP).record((thinker - verifier).abs());
}

/// Histogram buckets, in seconds, per histogram name: HTTP answers take
/// milliseconds; edits and critiques take seconds to minutes.
pub fn buckets() -> [(&'static str, &'static [f64]); 4] {
    const HTTP: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    // Score points, not seconds.
    const SCORE_GAP: &[f64] = &[0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0];
    const SLOW: &[f64] = &[
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ];
    [
        (HTTP_REQUEST_DURATION_SECONDS, HTTP),
        (EDIT_DURATION_SECONDS, SLOW),
        (CRITIQUE_DURATION_SECONDS, SLOW),
        (VERIFIER_GAP, SCORE_GAP),
    ]
}

/// Registers each metric's help text with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to the response head, by route template and method"
    );
    describe_counter!(
        JOBS_CREATED_TOTAL,
        "Jobs created through POST /v1/jobs (idempotent replays excluded)"
    );
    describe_counter!(
        JOBS_FINISHED_TOTAL,
        "Jobs that reached a terminal status, by status and stop reason"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Jobs queued or running, polled from the database"
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE_SECONDS,
        Unit::Seconds,
        "Wait of the oldest due queued job"
    );
    describe_counter!(TURNS_TOTAL, "Turns edited and recorded, by editor");
    describe_histogram!(
        VERIFIER_GAP,
        "Distance between the thinker's and the verifier's overall score of a candidate, 0 to 10"
    );
    describe_histogram!(
        EDIT_DURATION_SECONDS,
        Unit::Seconds,
        "One edit, retries and polls included, by editor and kind"
    );
    describe_histogram!(
        CRITIQUE_DURATION_SECONDS,
        Unit::Seconds,
        "One thinker call, retries included, answered or failed, by thinker kind"
    );
    describe_counter!(
        PROVIDER_REQUESTS_TOTAL,
        "HTTP attempts to editor providers (by editor kind) and to the remote thinker (thinker), by outcome"
    );
    describe_counter!(
        THINKER_TOKENS_TOTAL,
        "Tokens the thinker reported, prompt and generated"
    );
    describe_gauge!(SSE_STREAMS, "Open SSE streams in this process");
    describe_counter!(
        SSE_HANDOFFS_TOTAL,
        "SSE streams handed to the event hub's writer threads"
    );
    describe_counter!(
        SSE_FRAMING_MISMATCHES_TOTAL,
        "Connections closed because hyper's end of an SSE body differed from what the hub wrote for it"
    );
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Webhook delivery attempts, by outcome"
    );
    describe_counter!(JOB_RETRIES_TOTAL, "Jobs sent back to the queue, by reason");
    describe_counter!(
        AUTH_KEY_LOOKUPS_TOTAL,
        "API keys looked up in the database, by result (cache hits excluded)"
    );
    describe_counter!(
        AUTH_THROTTLED_TOTAL,
        "Requests refused (429) because their address failed to authenticate too often"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        for method in STANDARD_METHODS {
            assert_eq!(method_label(method), method);
        }
        for made_up in ["get", "FOO", "X-RANDOM-12345", "", "GETT", "PROPFIND"] {
            assert_eq!(method_label(made_up), OTHER_METHOD, "{made_up:?}");
        }
    }

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(431), "431");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(600), "other");
        assert_eq!(status_label(999), "other");
        assert_eq!(status_label(42), "other");
    }
}
