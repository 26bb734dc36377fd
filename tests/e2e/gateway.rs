//! `[auth] mode = "gateway"` behind the nginx example of
//! `deploy/kubernetes/gateway/gateway.conf`, run as written (only its
//! upstream and listen addresses, and the paths a test sandbox needs,
//! changed): callers authenticate to nginx, nginx names their tenant, and a
//! tenant a client names itself is ignored.
//!
//! Needs `nginx` (Debian `nginx-light`, which `.ci/run` installs). When it
//! is missing the test says so and passes — unless `CI` is set, where it
//! fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

async fn the_gateway_names_the_tenant_and_clients_cannot(mode: SseMode) {
    let Some(nginx) = which("nginx") else {
        tool_missing("gateway_e2e", "nginx (Debian: nginx-light)");
        return;
    };
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let config = env.config(
        "gateway",
        &format!(
            "[auth]\nmode = \"gateway\"\ntenant_header = \"X-Tenant-Id\"\n{}",
            backends_config(&thinker, &editor, env.dir.path())
        ),
    );
    let api = Service::start_with_env("api", &config, &[mode.env()]);
    let (gateway, _nginx) = start_gateway(&nginx, env.dir.path(), api.addr.unwrap()).await;

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let as_user = |user: &str, path: &str| {
        client
            .request(reqwest::Method::GET, format!("{gateway}{path}"))
            .basic_auth(user, Some("secret"))
    };
    // Probes pass without credentials; the API needs them.
    let open = client
        .get(format!("{gateway}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let closed = client
        .get(format!("{gateway}/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 401, "nginx asks for credentials");

    // alice (tenant acme) creates a job.
    let created = client
        .post(format!("{gateway}/v1/jobs"))
        .basic_auth("alice", Some("secret"))
        .json(&job_body(
            &png(8, 8, [5, 5, 5]),
            "through the gateway",
            json!({"max_turns": 1}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    let job: Value = created.json().await.unwrap();
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    assert_eq!(as_user("alice", &path).send().await.unwrap().status(), 200);
    // bob (tenant globex) cannot see it, even naming acme himself.
    let bob = as_user("bob", &path).send().await.unwrap();
    assert_eq!(bob.status(), 404);
    let spoofed = as_user("bob", &path)
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(
        spoofed.status(),
        404,
        "the gateway overwrites a client's tenant"
    );
    // carol authenticates to nginx but has no tenant: the API refuses her.
    let carol = as_user("carol", "/v1/jobs").send().await.unwrap();
    assert_eq!(carol.status(), 401);
    let problem: Value = carol.json().await.unwrap();
    assert_eq!(problem["code"], "unauthorized");
    // Listings through the gateway are per tenant too.
    let listed: Value = as_user("alice", "/v1/jobs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], job["id"]);
    let listed: Value = as_user("bob", "/v1/jobs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"], json!([]));

    // alice's event stream through nginx: open while the job waits, then
    // ended by its terminal event after a cancel, well formed.
    let id = job["id"].as_str().unwrap();
    let events = as_user("alice", &format!("/v1/jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let reading = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), events.text())
            .await
            .expect("the stream ends after its terminal event")
            .expect("a well-formed chunked body")
    });
    // The stream is open (replayed, and handed off where that is on)
    // before the job ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let canceled = client
        .post(format!("{gateway}{path}/cancel"))
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 202, "a cancel is accepted");
    let text = reading.await.unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds, ["job.queued", "job.canceled"], "{text}");
}

crate::both_sse_modes!(the_gateway_names_the_tenant_and_clients_cannot);

/// Runs `deploy/kubernetes/gateway/gateway.conf` in front of `upstream`; its
/// base URL.
async fn start_gateway(
    nginx: &Path,
    dir: &Path,
    upstream: std::net::SocketAddr,
) -> (String, Group) {
    let prefix = dir.join("gateway");
    std::fs::create_dir_all(&prefix).unwrap();
    let port = free_port();
    let original = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/gateway/gateway.conf"
    ))
    .unwrap();
    let p = prefix.display();
    // As root, nginx's workers would switch to a user that cannot read the
    // test's private folder; temp paths default to system folders.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let conf = format!("{user}{original}")
        // The API's Service name and the pod's port, as in Kubernetes.
        .replace("server editthinker-api:8080", &format!("server {upstream}"))
        .replace("listen 8088", &format!("listen 127.0.0.1:{port}"))
        .replace(
            "http {\n",
            &format!(
                "http {{\n    client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    \
                 fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    \
                 scgi_temp_path {p}/scgi;\n"
            ),
        );
    assert_ne!(conf, original, "the example's ports were found and changed");
    std::fs::write(prefix.join("gateway.conf"), conf).unwrap();
    std::fs::write(
        prefix.join("htpasswd"),
        "alice:{PLAIN}secret\nbob:{PLAIN}secret\ncarol:{PLAIN}secret\n",
    )
    .unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-c")
        .arg(prefix.join("gateway.conf"))
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-g")
        .arg("daemon off;");
    let output = prefix.join("nginx.out");
    let mut group = Group::spawn("nginx", cmd, &output);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        group.check_running(&output);
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return (base, group);
        }
        assert!(Instant::now() < deadline, "the gateway did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
