//! `editthinker-eval export --format thinkedit` against a small fake of the
//! service's read API written here (`GET /v1/jobs/{id}`, its source and its
//! turns' images, tiny PNGs), from a run folder pointing at it and by job id.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

const KEY: &str = "test-key";

/// A job the fake serves: its JSON, source and turn images (turn n at n − 1).
struct FakeJob {
    json: Value,
    source: Vec<u8>,
    turns: Vec<Vec<u8>>,
}

type Jobs = Arc<BTreeMap<String, FakeJob>>;

/// A 2×2 PNG of one colour.
fn png(shade: u8) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image::RgbImage::from_pixel(2, 2, image::Rgb([shade, 255 - shade, 7]))
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

/// A finished job with `turns` turns, each critiqued; `shade` tells its
/// images apart.
fn fake_job(id: &str, turns: u32, shade: u8) -> FakeJob {
    let views: Vec<Value> = (1..=turns)
        .map(|n| {
            json!({
                "index": n,
                "instruction": format!("{id} instruction {n}"),
                "image_url": format!("/v1/jobs/{id}/turns/{n}/image"),
                "editor_ms": 100,
                "provider_request_id": null,
                "critique": {
                    "semantic": 5.0 + f64::from(n), "quality": 8.0, "overall": 6.5,
                    "reasoning": format!("reasoning {n}"),
                    "refined_instruction": format!("{id} instruction {}", n + 1),
                    "satisfied": n == turns, "thinker_ms": 42, "error": null
                },
                "usage": {}, "chosen": 0, "candidates": []
            })
        })
        .collect();
    FakeJob {
        json: json!({
            "id": id, "status": "succeeded", "instruction": format!("{id} instruction 1"),
            "editor": "kontext", "sandbox": false, "options": {}, "turns": views,
            "result": {"turn": turns, "image_url": format!("/v1/jobs/{id}/result")},
            "error": null, "stop_reason": "satisfied"
        }),
        source: png(shade),
        turns: (1..=turns as u8).map(|n| png(shade + n)).collect(),
    }
}

fn authorized(headers: &HeaderMap) -> Result<(), StatusCode> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) if v == format!("Bearer {KEY}").as_str() => Ok(()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

fn found<T>(value: Option<T>) -> Result<T, StatusCode> {
    value.ok_or(StatusCode::NOT_FOUND)
}

fn png_response(bytes: &[u8]) -> Response {
    (
        [(header::CONTENT_TYPE, "image/png")],
        Bytes::from(bytes.to_vec()),
    )
        .into_response()
}

async fn job(
    State(jobs): State<Jobs>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, StatusCode> {
    authorized(&headers)?;
    Ok(Json(found(jobs.get(&id))?.json.clone()))
}

async fn source(
    State(jobs): State<Jobs>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, StatusCode> {
    authorized(&headers)?;
    Ok(png_response(&found(jobs.get(&id))?.source))
}

async fn turn_image(
    State(jobs): State<Jobs>,
    headers: HeaderMap,
    UrlPath((id, n)): UrlPath<(String, usize)>,
) -> Result<Response, StatusCode> {
    authorized(&headers)?;
    let job = found(jobs.get(&id))?;
    Ok(png_response(found(job.turns.get(n.wrapping_sub(1)))?))
}

/// Serves job-1 (two turns), job-2 and job-3 (one turn each); returns the
/// base URL and the jobs.
async fn serve() -> (String, Jobs) {
    let jobs: Jobs = Arc::new(
        [("job-1", 2, 10), ("job-2", 1, 60), ("job-3", 1, 120)]
            .into_iter()
            .map(|(id, turns, shade)| (id.to_string(), fake_job(id, turns, shade)))
            .collect(),
    );
    let app = Router::new()
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/source", get(source))
        .route("/v1/jobs/{id}/turns/{n}/image", get(turn_image))
        .with_state(jobs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), jobs)
}

/// A run folder whose run.json names `server` and whose cases.jsonl has
/// job-1 (both turns judged) and job-2 (its turn judged).
fn write_run(dir: &Path, server: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let parameters = json!({"suite": "s.jsonl", "server": server, "editor": null,
                            "options": {}, "candidates": false});
    std::fs::write(dir.join("run.json"), parameters.to_string()).unwrap();
    let turn = |n: u32, sc: f64, pq: f64| {
        json!({"index": n, "instruction": "i", "thinker": {"semantic": null, "quality": null,
               "overall": null}, "verifier": null, "editor_ms": 1, "thinker_ms": null,
               "judge": {"sc": sc, "pq": pq, "o": (sc * pq).sqrt()}})
    };
    let cases = [
        ("c1", "job-1", vec![turn(1, 4.0, 9.0), turn(2, 9.0, 4.0)]),
        ("c2", "job-2", vec![turn(1, 1.0, 1.0)]),
    ]
    .map(|(id, job, turns)| {
        json!({"id": id, "group": "color", "language": "en", "job_id": job,
               "status": "succeeded", "error": null, "selected_turn": turns.len(),
               "editor_calls": turns.len(), "cost": 0.0, "currency": "USD", "turns": turns})
        .to_string()
    });
    std::fs::write(dir.join("cases.jsonl"), cases.join("\n") + "\n").unwrap();
}

/// Runs the binary's `export --format thinkedit` in `cwd`, with the
/// service's key unless `keyless`.
async fn export_as(keyless: bool, cwd: &Path, args: &[&str]) -> Output {
    let key = (!keyless).then_some(["--key", KEY]);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_editthinker-eval"))
        .args(["export", "--format", "thinkedit"])
        .args(key.into_iter().flatten())
        .args(args)
        .env_remove("EDITTHINKER_EVAL_KEY")
        .current_dir(cwd)
        .output()
        .await
        .unwrap()
}

async fn export(cwd: &Path, args: &[&str]) -> Output {
    export_as(false, cwd, args).await
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_and_extra_jobs_export_with_images_and_judge_scores() {
    let (server, jobs) = serve().await;
    let dir = TempDir::new().unwrap();
    write_run(&dir.path().join("run"), &server);
    let output = export(
        dir.path(),
        &[
            "--run",
            "run",
            "--jobs",
            "job-3",
            "--out",
            "data/traj.jsonl",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let data = dir.path().join("data");
    let lines = read_lines(&data.join("traj.jsonl"));
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["job-1", "job-2", "job-3"]);

    let first = &lines[0];
    assert_eq!(first["format"], "thinkedit/1");
    assert_eq!(
        (first["case_id"].as_str(), first["group"].as_str()),
        (Some("c1"), Some("color"))
    );
    assert_eq!(first["instruction"], "job-1 instruction 1");
    assert_eq!(first["editor"], "kontext");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["selected_turn"], 2);
    assert_eq!(first["source"], "traj.images/job-1/source.png");
    let turns = first["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["index"], 2);
    assert_eq!(turns[1]["instruction"], "job-1 instruction 2");
    assert_eq!(turns[1]["image"], "traj.images/job-1/turn-2.png");
    assert_eq!(
        turns[0]["critique"],
        json!({"semantic": 6.0, "quality": 8.0, "overall": 6.5, "reasoning": "reasoning 1",
               "refined_instruction": "job-1 instruction 2", "satisfied": false})
    );
    assert_eq!(turns[1]["critique"]["satisfied"], true);
    // The judge's scores come from the run's cases.jsonl.
    assert_eq!(turns[0]["judge"], json!({"sc": 4.0, "pq": 9.0, "o": 6.0}));
    assert_eq!(turns[1]["judge"], json!({"sc": 9.0, "pq": 4.0, "o": 6.0}));
    assert_eq!(lines[1]["turns"][0]["judge"]["o"], 1.0);

    // A job given by id has no case and no judge scores.
    let extra = &lines[2];
    assert!(extra.get("case_id").is_none(), "{extra}");
    assert!(extra["turns"][0].get("judge").is_none(), "{extra}");

    // Every referenced image is the file the service served.
    for (line, fake) in lines
        .iter()
        .zip(["job-1", "job-2", "job-3"].map(|id| &jobs[id]))
    {
        let read =
            |reference: &Value| std::fs::read(data.join(reference.as_str().unwrap())).unwrap();
        assert_eq!(read(&line["source"]), fake.source);
        let images: Vec<Vec<u8>> = line["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| read(&t["image"]))
            .collect();
        assert_eq!(images, fake.turns);
    }
    assert_eq!(
        std::fs::read(data.join("traj.images/job-3/turn-1.png")).unwrap(),
        jobs["job-3"].turns[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_by_id_inline_their_images_and_a_missing_job_fails_the_export() {
    let (server, jobs) = serve().await;
    let dir = TempDir::new().unwrap();
    let output = export(
        dir.path(),
        &[
            "--server",
            &server,
            "--jobs",
            "job-2,job-404",
            "--inline",
            "--out",
            "traj.jsonl",
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("job-404") && stderr.contains("404"),
        "{stderr}"
    );

    // The jobs that could be read are written all the same.
    let lines = read_lines(&dir.path().join("traj.jsonl"));
    assert_eq!(lines.len(), 1);
    let decode = |reference: &Value| {
        let data = reference
            .as_str()
            .unwrap()
            .strip_prefix("data:image/png;base64,")
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    };
    assert_eq!(decode(&lines[0]["source"]), jobs["job-2"].source);
    assert_eq!(
        decode(&lines[0]["turns"][0]["image"]),
        jobs["job-2"].turns[0]
    );
    assert!(!dir.path().join("traj.images").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn images_outside_the_output_folder_are_referenced_by_absolute_path() {
    let (server, jobs) = serve().await;
    let dir = TempDir::new().unwrap();
    let images = TempDir::new().unwrap();
    let images_arg = images.path().to_str().unwrap();
    let output = export(
        dir.path(),
        &[
            "--server", &server, "--jobs", "job-3", "--images", images_arg, "--out", "t.jsonl",
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = read_lines(&dir.path().join("t.jsonl"));
    let source = Path::new(lines[0]["source"].as_str().unwrap());
    assert!(source.is_absolute(), "{source:?}");
    assert!(source.ends_with("job-3/source.png"));
    assert_eq!(std::fs::read(source).unwrap(), jobs["job-3"].source);
    // Without --key the fake refuses, and the export says so.
    let refused = export_as(
        true,
        dir.path(),
        &["--server", &server, "--jobs", "job-3", "--out", "u.jsonl"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}
