//! Hostile cases at the HTTP edge: metric labels, security headers,
//! problem bodies before routing, unauthenticated floods.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A token no one would send twice: a made-up method or path segment.
fn made_up(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple()).to_uppercase()
}

/// `/metrics` of the exporter at `addr`, as text; asserts the edge headers
/// on the way.
async fn scrape(addr: &str) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_security_headers(resp.headers(), "/metrics");
    resp.text().await.unwrap()
}

/// The value of the sample `name` whose labels include `labels` (summed
/// over the samples that match).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

/// What every response must carry (issue 20, finding 11).
fn assert_security_headers(headers: &reqwest::header::HeaderMap, what: &str) {
    assert_eq!(
        headers.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "{what}: {headers:?}"
    );
    assert_eq!(
        headers.get("referrer-policy").map(|v| v.as_bytes()),
        Some(&b"no-referrer"[..]),
        "{what}: {headers:?}"
    );
}

/// A raw HTTP/1.1 exchange: `head` is sent as is (then `Connection:
/// close` and the blank line); the status, the headers (lower-cased
/// names) and the body read to the end.
fn raw(addr: SocketAddr, head: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head).unwrap();
    stream.write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, answer[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Finding 3: made-up methods and paths never become label values; they
/// share `method="other"` and `route="unmatched"`, and /metrics stays the
/// same size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_and_paths_do_not_grow_metrics() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.config("edge", "");
    let metrics = format!("127.0.0.1:{}", free_port());
    let service = Service::start_with_env(
        "serve",
        &config,
        &[("EDITTHINKER_METRICS__LISTEN", metrics.as_str())],
    );
    let http = reqwest::Client::new();
    // One request of each kind first, so every series the flood can touch
    // exists before the baseline is measured.
    let send = |method: &str, path: &str| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        http.request(method, service.url(path)).send()
    };
    let warm = [
        send(&made_up("M"), "/healthz").await.unwrap().status(),
        send(&made_up("M"), &format!("/{}", made_up("p")))
            .await
            .unwrap()
            .status(),
        send("GET", &format!("/{}", made_up("p")))
            .await
            .unwrap()
            .status(),
    ];
    assert_eq!(warm, [405, 404, 404]);
    let before = scrape(&metrics).await;
    let other_before = sample(
        &before,
        "editthinker_http_requests_total",
        &[("method", "other")],
    )
    .expect("the other series exists");

    let mut sent = Vec::new();
    for i in 0..300 {
        let method = made_up("M");
        let path = format!("/{}/{}", made_up("p"), made_up("q"));
        // A third on a real route (405), the rest on made-up paths (404).
        let target = if i % 3 == 0 {
            "/healthz".to_string()
        } else {
            path.clone()
        };
        let resp = send(&method, &target).await.unwrap();
        assert!(
            matches!(resp.status().as_u16(), 404 | 405),
            "{}",
            resp.status()
        );
        sent.push((method, path));
    }
    let after = scrape(&metrics).await;
    let growth = after.len() as i64 - before.len() as i64;
    eprintln!(
        "/metrics: {} bytes before, {} after 300 made-up methods and paths",
        before.len(),
        after.len()
    );
    for (method, path) in &sent {
        assert!(!after.contains(method.as_str()), "{method} became a label");
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            assert!(!after.contains(segment), "{segment} became a label");
        }
    }
    let other_after = sample(
        &after,
        "editthinker_http_requests_total",
        &[("method", "other")],
    )
    .unwrap();
    assert_eq!(other_after - other_before, 300.0);
    assert_eq!(
        sample(
            &after,
            "editthinker_http_requests_total",
            &[
                ("method", "other"),
                ("route", "unmatched"),
                ("status", "404")
            ]
        ),
        Some(1.0 + 200.0)
    );
    assert!(growth < 2048, "/metrics grew by {growth} bytes");
}

/// Finding 11 (a): the headers are on JSON, problems, images, SSE, the
/// viewer, and /metrics (checked in [`scrape`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_nosniff_and_no_referrer() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let config = env.config("edge", &backends_config(&thinker, &editor, env.dir.path()));
    let metrics = format!("127.0.0.1:{}", free_port());
    let service = Service::start_with_env(
        "serve",
        &config,
        &[("EDITTHINKER_METRICS__LISTEN", metrics.as_str())],
    );
    let job = create_job(
        &service,
        job_body(&png(8, 8, [1, 2, 3]), "add a hat", json!({"max_turns": 1})),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    for (path, status, content_type) in [
        (format!("/v1/jobs/{id}"), 200, "application/json"),
        ("/v1/editors".into(), 200, "application/json"),
        (format!("/v1/jobs/{id}/source"), 200, "image/"),
        ("/no/such/route".into(), 404, "application/problem+json"),
        (
            format!("/v1/jobs/{}", uuid::Uuid::now_v7()),
            404,
            "application/problem+json",
        ),
        ("/ui".into(), 200, "text/html"),
        ("/ui/assets/app.js".into(), 200, "text/javascript"),
        ("/openapi.json".into(), 200, "application/json"),
        ("/healthz".into(), 200, "text/plain"),
    ] {
        let resp = http.get(service.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let kind = resp.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with(content_type), "{path}: {kind}");
        assert_security_headers(resp.headers(), &path);
    }
    // An event stream's head (written by hyper before the hub takes the
    // socket over).
    let resp = http
        .get(service.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_security_headers(resp.headers(), "events");
    drop(resp);
    // A method the route does not have (405), and a body that is not JSON.
    let resp = http.delete(service.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_security_headers(resp.headers(), "405");
    let resp = http
        .post(service.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_security_headers(resp.headers(), "400");
    scrape(&metrics).await;
}

/// Finding 11 (b): 100 header fields pass; more are answered 431 with a
/// problem body, by the API up to the 128 fields hyper parses and past
/// that by the rewrite of hyper's bare answer; a head hyper cannot parse
/// (NUL in a value) gets a 400 problem the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_answer_a_problem() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let service = Service::start("serve", &env.config("edge", ""));
    let addr = service.addr.unwrap();
    // Host and Connection, plus `extra` fields.
    let head = |extra: usize| {
        let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: edge\r\n");
        for i in 0..extra {
            head.push_str(&format!("X-Filler-{i}: {i}\r\n"));
        }
        head.into_bytes()
    };
    let (status, headers, _) = raw(addr, &head(98));
    assert_eq!(status, 200, "100 fields are allowed");
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    for extra in [99, 120] {
        let (status, headers, body) = raw(addr, &head(extra));
        assert_eq!(status, 431, "{} fields", extra + 2);
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/problem+json")
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "headers_too_large");
        assert_eq!(problem["status"], 431);
        assert!(
            problem["detail"].as_str().unwrap().contains("100"),
            "{problem}"
        );
    }
    // obs-text (bytes 0x80-0xFF) is allowed in values: the request is
    // served, with the headers.
    let mut obs = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Obs: caf".to_vec();
    obs.extend_from_slice(b"\xe9\r\n");
    let (status, headers, _) = raw(addr, &obs);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    // Hyper's parser refuses these before any of our code runs; its bare
    // answers are given problem bodies on the way out.
    let nul = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Nul: a\0b\r\n".to_vec();
    let control = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Bell: \x07\r\n".to_vec();
    for (request, status, code) in [
        (nul, 400, "malformed_request"),
        (control, 400, "malformed_request"),
        (head(198), 431, "headers_too_large"),
    ] {
        let (got, headers, body) = raw(addr, &request);
        assert_eq!(got, status, "{headers:?}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/problem+json")
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(
            header(&headers, "content-length"),
            Some(body.len().to_string().as_str())
        );
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], code);
        assert_eq!(problem["status"], status);
    }
    // Pipelined behind a good request: the good answer is untouched, the
    // bad one follows with its problem.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\nGET /healthz HTTP/1.1\r\nX-Nul: \0\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let second = &answer[answer.find("HTTP/1.1 400").expect("a second answer")..];
    assert!(second.contains("application/problem+json"), "{second}");
    assert!(
        second.ends_with("\"code\":\"malformed_request\"}"),
        "{second}"
    );
}

/// Finding 11 (c): the viewer strips bidirectional controls from the text
/// it shows. Its `plain` function, as served, is run by node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_strips_bidi_controls() {
    let Some(node) = which("node") else {
        return tool_missing("the_viewer_strips_bidi_controls", "node");
    };
    let env = TestEnv::new(Backend::Sqlite).await;
    let service = Service::start("serve", &env.config("edge", ""));
    let script = reqwest::get(service.url("/ui/assets/app.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let definitions: String = script
        .lines()
        .filter(|l| l.starts_with("const BIDI_CONTROLS") || l.starts_with("function plain("))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(definitions.lines().count(), 2, "plain() is in app.js");
    let probe =
        format!("{definitions}process.stdout.write(JSON.stringify(plain(process.argv[1])));");
    let text = "add \u{202E}tah a\u{202C} and \u{2066}x\u{2069} \u{202A}y\u{202B}z\u{202D}";
    let out = std::process::Command::new(node)
        .args(["-e", &probe, text])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: String = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, "add tah a and x yz");
}

/// A client whose connections come from `ip` (any 127/8 address reaches
/// the loopback listener).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn status_as(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    http.get(url).bearer_auth(key).send().await.unwrap()
}

/// Finding 9: made-up keys from one address cost at most the address's
/// allowance of lookups, then 429; a repeated bad key is looked up once;
/// valid keys keep working. Uses the `[auth]` defaults (60 failures a
/// minute per address, unknown keys remembered 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_cost_no_lookups_past_the_limit() {
    let env = TestEnv::new(Backend::Postgres).await;
    let config = env.config(
        "keys",
        "[auth]\nmode = \"api_keys\"\n[limits]\nrequests_per_second = 10000\nburst = 10000\n",
    );
    let key = keys_cli(&config, &["create", "--tenant", "acme"]);
    let fresh_key = keys_cli(&config, &["create", "--tenant", "acme"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let service = Service::start_with_env(
        "serve",
        &config,
        &[("EDITTHINKER_METRICS__LISTEN", metrics.as_str())],
    );
    let url = service.url("/v1/jobs");
    let lookups = |text: &str, result: &str| {
        sample(
            text,
            "editthinker_auth_key_lookups_total",
            &[("result", result)],
        )
    };
    let start = scrape(&metrics).await;
    assert_eq!(
        lookups(&start, "found"),
        Some(0.0),
        "exposed from the start"
    );
    assert_eq!(lookups(&start, "unknown"), Some(0.0));
    assert_eq!(
        sample(&start, "editthinker_auth_throttled_total", &[]),
        Some(0.0)
    );

    let attacker = client_from("127.0.0.1");
    assert_eq!(status_as(&attacker, &url, &key).await.status(), 200);
    let (mut unauthorized, mut throttled) = (0, 0);
    let started = std::time::Instant::now();
    for _ in 0..500 {
        let bad = format!("et_{}", made_up("").to_lowercase());
        let resp = status_as(&attacker, &url, &bad).await;
        match resp.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                throttled += 1;
                assert_eq!(resp.headers()["content-type"], "application/problem+json");
                let wait: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&wait), "Retry-After {wait}");
                let problem: Value = resp.json().await.unwrap();
                assert_eq!(problem["code"], "rate_limited");
            }
            other => panic!("status {other}"),
        }
    }
    let took = started.elapsed();
    // 60 at once, then one a second.
    let allowance = 60 + took.as_secs() as usize + 1;
    assert!(
        (60..=allowance).contains(&unauthorized),
        "{unauthorized} of 500 made-up keys were looked up in {took:?}"
    );
    assert_eq!(unauthorized + throttled, 500);
    // A key valid a moment ago still works from the throttled address.
    assert_eq!(status_as(&attacker, &url, &key).await.status(), 200);
    // A key never seen works from another address.
    let other = client_from("127.0.0.2");
    assert_eq!(status_as(&other, &url, &fresh_key).await.status(), 200);

    let flooded = scrape(&metrics).await;
    assert_eq!(lookups(&flooded, "unknown"), Some(unauthorized as f64));
    // 2, or 3 when the flood outlasted the 5 s trust in a found key.
    let found = lookups(&flooded, "found").unwrap();
    assert!(
        (2.0..=3.0).contains(&found),
        "{found} lookups of valid keys"
    );
    assert_eq!(
        sample(&flooded, "editthinker_auth_throttled_total", &[]),
        Some(throttled as f64)
    );

    // One bad key, 80 times, from a third address: looked up once, 401
    // until the address's allowance is spent, then 429.
    let repeater = client_from("127.0.0.3");
    let bad = format!("et_{}", made_up("").to_lowercase());
    let mut statuses = Vec::new();
    for _ in 0..80 {
        statuses.push(status_as(&repeater, &url, &bad).await.status().as_u16());
    }
    assert!(statuses[..60].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[62..].iter().all(|s| *s == 429), "{statuses:?}");
    let repeated = scrape(&metrics).await;
    assert_eq!(
        lookups(&repeated, "unknown"),
        Some(unauthorized as f64 + 1.0)
    );
    eprintln!(
        "500 made-up keys: {unauthorized} looked up (401), {throttled} refused (429) in {took:?}; \
         one bad key 80 times: 1 lookup"
    );
}
