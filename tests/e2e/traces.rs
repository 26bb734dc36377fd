//! One trace from the create request to the last critique, across an `api`
//! and a `worker` process: both export over OTLP/HTTP (protobuf) to a
//! receiver written here, which decodes what they send with the OTLP
//! protobuf definitions. The client's `traceparent` is the root; the API's
//! request span, the queue wait, the job, every edit (and its provider
//! request) and every critique hang under it. The worker's JSON logs carry
//! the same `trace_id` and the `job_id`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{json, Value};

/// One received span.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP traces receiver; its base URL and what it got.
async fn receiver() -> (String, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(
                    headers["content-type"], "application/x-protobuf",
                    "OTLP/HTTP sends protobuf"
                );
                let request = ExportTraceServiceRequest::decode(body).expect("a valid OTLP export");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| v.value.as_ref())
                        .map(|v| match v {
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            store.lock().unwrap().push(ReceivedSpan {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Creates an "add a hat" job inside the client's trace; its id.
async fn create_traced_job(service: &Service) -> String {
    let resp = reqwest::Client::new()
        .post(service.url("/v1/jobs"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&job_body(&png(32, 32, [9, 9, 9]), "add a hat", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_queue_to_every_critique() {
    let env = TestEnv::new(Backend::Postgres).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // Two turns: the first critique asks for a refinement.
    thinker.on("add a hat", said(3, 3, "add a red hat"));
    let (otlp, spans) = receiver().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config(
        "traced",
        &format!("[telemetry]\notlp_endpoint = \"{otlp}\"\nservice_name = \"et-test\"\n{backends}"),
    );
    let json_logs = [("EDITTHINKER_LOG__FORMAT", "json")];
    let mut api = Service::start_with_env("api", &config, &json_logs);
    let mut worker = Service::start_with_env("worker", &config, &json_logs);

    let id = create_traced_job(&api).await;
    let done = wait_for_job(&api, &id, Duration::from_secs(60), is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["turns"].as_array().unwrap().len(), 2);

    // A clean stop flushes what the batch exporters hold.
    assert!(worker.terminate().success());
    assert!(api.terminate().success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let traced = loop {
        let traced: Vec<ReceivedSpan> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .cloned()
            .collect();
        if traced
            .iter()
            .filter(|s| s.name == "thinker.critique")
            .count()
            == 2
            || tokio::time::Instant::now() > deadline
        {
            break traced;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named =
        |name: &str| -> Vec<&ReceivedSpan> { traced.iter().filter(|s| s.name == name).collect() };
    let all = spans.lock().unwrap().clone();
    assert!(all.iter().all(|s| s.service == "et-test"), "{all:#?}");

    // The API's request span is the child of the client's.
    let request = named("POST /v1/jobs");
    assert_eq!(request.len(), 1, "{traced:#?}");
    assert_eq!(request[0].parent_span_id, CLIENT_SPAN);
    // The worker continues the stored context: queue wait and job under the request.
    let wait = named("queue.wait");
    let jobs = named("job");
    assert_eq!(wait.len(), 1, "{traced:#?}");
    assert_eq!(jobs.len(), 1, "{traced:#?}");
    assert_eq!(wait[0].parent_span_id, request[0].span_id);
    assert_eq!(jobs[0].parent_span_id, request[0].span_id);
    // Every edit and critique of the job, in its trace.
    let edits = named("editor.edit");
    assert_eq!(edits.len(), 2, "{traced:#?}");
    assert!(edits.iter().all(|e| e.parent_span_id == jobs[0].span_id));
    let provider = named("editor.request");
    assert_eq!(provider.len(), 2, "{traced:#?}");
    assert!(provider
        .iter()
        .all(|p| edits.iter().any(|e| e.span_id == p.parent_span_id)));
    let critiques = named("thinker.critique");
    assert_eq!(critiques.len(), 2, "{traced:#?}");
    assert!(critiques
        .iter()
        .all(|c| c.parent_span_id == jobs[0].span_id));
    assert_eq!(editor.calls().len(), 2);
    assert_eq!(thinker.calls().len(), 2);

    // The worker's JSON log lines of the job carry both ids.
    let logs = worker.logs.lock().unwrap().clone();
    let edited: Vec<Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "turn edited")
        .collect();
    assert_eq!(edited.len(), 2, "{logs:#?}");
    for line in &edited {
        let span = &line["span"];
        assert_eq!(span["trace_id"], TRACE_ID, "{line}");
        assert_eq!(span["job_id"], id.as_str(), "{line}");
    }
}

/// Without an exporter the caller's trace id still reaches the job's logs.
#[tokio::test]
async fn without_an_exporter_the_callers_trace_id_still_reaches_the_logs() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let config = env.config("plain", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start_with_env("serve", &config, &[("EDITTHINKER_LOG__FORMAT", "json")]);
    let id = create_traced_job(&service).await;
    wait_for_job(&service, &id, Duration::from_secs(30), is_terminal).await;
    let logs = service.logs.lock().unwrap().clone();
    let line = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "turn edited")
        .expect("a turn was logged");
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
}
