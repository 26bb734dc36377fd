//! The deployment artefacts of issue 11, checked without a cluster or a
//! container registry:
//!
//! - `deploy/kubernetes/overlays/{dev,production}` render with `kubectl
//!   kustomize`, every object passes `deploy/kubernetes/validate.py`
//!   (built-in kinds in strict mode, KEDA kinds against the schemas in
//!   `deploy/kubernetes/schemas/`), and the result keeps the contract: the
//!   objects docs/operations.md names, a GPU per worker, KEDA on the
//!   queue, probes, grace periods longer than the worker's, no secret in
//!   git, non-root read-only containers. The same checks, run on a broken
//!   copy, report each break, and the validator rejects broken objects.
//! - `docker/Dockerfile` and `docker/Dockerfile.gpu`, parsed here: cargo-chef
//!   stages, dependencies cooked before the sources are copied, the features
//!   each image is built with, a non-root numeric user, ports, entrypoint,
//!   and no HEALTHCHECK.
//!
//! Needs `kubectl` and Python with PyYAML, jsonschema and kubernetes-validate
//! (`.ci/run` installs them). When one is missing the cluster tests say so
//! and pass, unless `CI` is set, where they fail. The Dockerfile tests need
//! nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{run_with_stdin, tool_missing, which};
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VALIDATOR: &str = "deploy/kubernetes/validate.py";

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// Fails under CI, else says why the test is skipped.
fn missing(what: &str) {
    tool_missing("deploy_e2e", what);
}

/// `python3`, when it can import what the validator needs.
fn python() -> Option<PathBuf> {
    let python = which("python3");
    let usable = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import yaml, jsonschema, kubernetes_validate"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !usable {
        missing("python3 with pyyaml, jsonschema and kubernetes-validate");
        return None;
    }
    python
}

fn kubectl() -> Option<PathBuf> {
    let found = which("kubectl");
    if found.is_none() {
        missing("kubectl");
    }
    found
}

/// `kubectl kustomize` of an overlay: the YAML stream `kubectl apply -k` sends.
fn render(kubectl: &Path, overlay: &str) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(format!("deploy/kubernetes/overlays/{overlay}"))
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the validator on `yaml`; its exit status and report.
fn validate(python: &Path, yaml: &str, args: &[&str]) -> (i32, Value) {
    let out = run_with_stdin(
        Command::new(python)
            .arg(VALIDATOR)
            .arg("--dump")
            .args(args)
            .current_dir(ROOT),
        yaml.as_bytes(),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the validator printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

// ---------------------------------------------------------------------------
// The manifests' contract
// ---------------------------------------------------------------------------

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// The pod spec of a Deployment or Job.
fn pod(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

fn containers(doc: &Value) -> Vec<&Value> {
    let pod = pod(doc);
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| pod[*key].as_array())
        .flatten()
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// A number written as YAML int or string ("1").
fn number(value: &Value) -> Option<f64> {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Everything that breaks the deployment contract (docs/operations.md "Deploying on
/// Kubernetes"); empty when `docs` (one rendered overlay) keeps it.
fn contract_violations(docs: &[Value]) -> Vec<String> {
    let mut v = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            v.push(what);
        }
    };

    for (kind, name) in [
        ("Deployment", "editthinker-api"),
        ("Deployment", "editthinker-worker"),
        ("Service", "editthinker-api"),
        ("HorizontalPodAutoscaler", "editthinker-api"),
        ("PodDisruptionBudget", "editthinker-api"),
        ("Job", "editthinker-migrate"),
        ("ScaledObject", "editthinker-worker"),
    ] {
        check(
            find(docs, kind, name).is_some(),
            format!("no {kind} {name}"),
        );
    }
    check(
        docs.iter().any(|d| d["kind"] == "NetworkPolicy"),
        "no NetworkPolicy".into(),
    );

    let (Some(api), Some(worker)) = (
        find(docs, "Deployment", "editthinker-api"),
        find(docs, "Deployment", "editthinker-worker"),
    ) else {
        return v;
    };
    let api_c = &pod(api)["containers"][0];
    let worker_c = &pod(worker)["containers"][0];

    // The API: probes, listen address, grace period, autoscaling.
    check(
        api_c["livenessProbe"]["httpGet"]["path"] == "/healthz",
        "the API's liveness probe is not GET /healthz".into(),
    );
    check(
        api_c["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "the API's readiness probe is not GET /readyz".into(),
    );
    check(
        env(api_c, "EDITTHINKER_LISTEN").is_some_and(|e| e["value"] == "0.0.0.0:8080"),
        "the API does not listen on 0.0.0.0:8080".into(),
    );
    check(
        api_c["args"] == json!(["api"]) && worker_c["args"] == json!(["worker"]),
        "the API and worker pods do not run the api and worker roles".into(),
    );
    check(
        pod(api)["terminationGracePeriodSeconds"]
            .as_u64()
            .is_some_and(|s| s >= 30),
        "the API has no terminationGracePeriodSeconds of at least 30".into(),
    );
    if let Some(hpa) = find(docs, "HorizontalPodAutoscaler", "editthinker-api") {
        check(
            hpa["apiVersion"] == "autoscaling/v2"
                && hpa["spec"]["scaleTargetRef"]["name"] == "editthinker-api",
            "the HPA is not autoscaling/v2 on the API Deployment".into(),
        );
    }
    if let Some(pdb) = find(docs, "PodDisruptionBudget", "editthinker-api") {
        check(
            pdb["apiVersion"] == "policy/v1",
            "the PodDisruptionBudget is not policy/v1".into(),
        );
    }

    // The worker: a GPU, and more time to stop than it gives its jobs.
    check(
        number(&worker_c["resources"]["limits"]["nvidia.com/gpu"]) == Some(1.0),
        "the worker does not ask for nvidia.com/gpu: 1 in its limits".into(),
    );
    let grace = env(worker_c, "EDITTHINKER_WORKER__SHUTDOWN_GRACE_SECONDS")
        .and_then(|e| number(&e["value"]));
    let termination = pod(worker)["terminationGracePeriodSeconds"].as_f64();
    check(
        matches!((grace, termination), (Some(g), Some(t)) if t > g),
        format!(
            "the worker's terminationGracePeriodSeconds ({termination:?}) is not above \
             EDITTHINKER_WORKER__SHUTDOWN_GRACE_SECONDS ({grace:?})"
        ),
    );

    // KEDA scales the workers on queued and running jobs.
    if let Some(scaled) = find(docs, "ScaledObject", "editthinker-worker") {
        let spec = &scaled["spec"];
        check(
            scaled["apiVersion"] == "keda.sh/v1alpha1"
                && spec["scaleTargetRef"]["name"] == "editthinker-worker",
            "the ScaledObject does not target the worker Deployment".into(),
        );
        check(
            spec["minReplicaCount"] == 0
                && spec["maxReplicaCount"].as_u64().is_some_and(|n| n >= 1),
            "the ScaledObject does not scale between 0 and N workers".into(),
        );
        let triggers = spec["triggers"].as_array().cloned().unwrap_or_default();
        let postgres = triggers.iter().find(|t| t["type"] == "postgresql");
        match postgres {
            None => check(false, "the ScaledObject has no postgresql trigger".into()),
            Some(t) => {
                let query = t["metadata"]["query"].as_str().unwrap_or_default();
                check(
                    ["FROM jobs", "status", "'queued'", "'running'"]
                        .iter()
                        .all(|w| query.contains(w)),
                    format!(
                        "the trigger's query does not count queued and running jobs: {query:?}"
                    ),
                );
                check(
                    number(&t["metadata"]["targetQueryValue"]).is_some_and(|n| n > 0.0),
                    "the trigger has no targetQueryValue".into(),
                );
                let auth = t["authenticationRef"]["name"].as_str().unwrap_or_default();
                let from_secret = find(docs, "TriggerAuthentication", auth).is_some_and(|a| {
                    a["spec"]["secretTargetRef"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["parameter"] == "connection"))
                });
                check(
                    from_secret,
                    "the trigger's connection does not come from a Secret through a TriggerAuthentication"
                        .into(),
                );
            }
        }
    }

    // Network: the API only from the gateway (8080) and monitoring (9090);
    // the worker only metrics.
    let policy_for = |component: &str| {
        docs.iter().find(|d| {
            d["kind"] == "NetworkPolicy"
                && d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                    == component
        })
    };
    let ingress_ports = |policy: &Value| -> Vec<u64> {
        policy["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    match policy_for("api") {
        Some(p) => {
            let rules = p["spec"]["ingress"].as_array().cloned().unwrap_or_default();
            let from_gateway = rules.iter().any(|r| {
                r["ports"][0]["port"] == 8080
                    && r["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                        == "gateway"
            });
            check(
                from_gateway,
                "the API's NetworkPolicy does not admit the gateway on 8080".into(),
            );
            let mut ports = ingress_ports(p);
            ports.sort();
            ports.dedup();
            check(
                ports == [8080, 9090],
                format!("the API admits ports {ports:?}, not 8080 and 9090"),
            );
        }
        None => check(false, "no NetworkPolicy for the API".into()),
    }
    match policy_for("worker") {
        Some(p) => check(
            ingress_ports(p) == [9090],
            "the worker's NetworkPolicy admits more than metrics".into(),
        ),
        None => check(false, "no NetworkPolicy for the worker".into()),
    }

    // The TOML configuration: a ConfigMap mounted where EDITTHINKER_CONFIG points.
    for workload in [api, worker] {
        let c = &pod(workload)["containers"][0];
        let name = workload["metadata"]["name"].as_str().unwrap_or_default();
        let path = env(c, "EDITTHINKER_CONFIG")
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default();
        let mounted = c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
            let dir = m["mountPath"].as_str().unwrap_or("-");
            let file = path
                .strip_prefix(dir)
                .unwrap_or_default()
                .trim_start_matches('/');
            let volume = pod(workload)["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|vol| vol["name"] == m["name"]);
            let config_map = volume
                .and_then(|vol| vol["configMap"]["name"].as_str())
                .and_then(|cm| find(docs, "ConfigMap", cm));
            !file.is_empty() && config_map.is_some_and(|cm| cm["data"][file].is_string())
        });
        check(
            mounted,
            format!("{name}: EDITTHINKER_CONFIG ({path:?}) is not a file of a mounted ConfigMap"),
        );
    }

    // Secrets: referenced, never written down.
    for doc in docs.iter().filter(|d| d["kind"] == "Secret") {
        let inline = ["data", "stringData"]
            .iter()
            .any(|k| doc[*k].as_object().is_some_and(|m| !m.is_empty()));
        check(
            !inline,
            format!(
                "Secret {} holds its values in the manifests",
                doc["metadata"]["name"]
            ),
        );
    }

    // Every container: non-root, read-only, no capabilities, sized.
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
    {
        let name = workload["metadata"]["name"].as_str().unwrap_or_default();
        let pod_sc = &pod(workload)["securityContext"];
        for c in containers(workload) {
            let sc = &c["securityContext"];
            let who = format!("{name}/{}", c["name"].as_str().unwrap_or_default());
            let non_root = sc["runAsNonRoot"] == true
                || (sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] == true);
            let uid = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
            check(non_root && uid != Some(0), format!("{who} may run as root"));
            check(
                sc["readOnlyRootFilesystem"] == true,
                format!("{who} has a writable root filesystem"),
            );
            check(
                sc["allowPrivilegeEscalation"] == false
                    && sc["capabilities"]["drop"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|c| c == "ALL")),
                format!("{who} keeps capabilities or may escalate"),
            );
            check(
                c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object(),
                format!("{who} has no resource requests and limits"),
            );
            // A database URL carries a password: from a Secret only.
            if let Some(url) = env(c, "EDITTHINKER_DATABASE_URL") {
                check(
                    url["value"].is_null() && url["valueFrom"]["secretKeyRef"]["name"].is_string(),
                    format!("{who} has EDITTHINKER_DATABASE_URL written in the manifest"),
                );
            }
        }
    }
    v
}

/// The images of the editthinker containers, as `name:tag`.
fn editthinker_images(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        .flat_map(containers)
        .filter_map(|c| c["image"].as_str())
        .filter(|i| i.contains("editthinker"))
        .map(str::to_string)
        .collect()
}

/// A rendered overlay, validated; its objects.
fn rendered(kubectl: &Path, python: &Path, overlay: &str) -> Vec<Value> {
    let yaml = render(kubectl, overlay);
    let (status, report) = validate(python, &yaml, &["--complete"]);
    assert_eq!(
        (status, &report["valid"]),
        (0, &json!(true)),
        "{overlay} does not validate: {:#}",
        report["errors"]
    );
    report["documents"].as_array().unwrap().clone()
}

#[test]
fn overlays_render_validate_and_keep_the_contract() {
    let (Some(kubectl), Some(python)) = (kubectl(), python()) else {
        return;
    };
    let dev = rendered(&kubectl, &python, "dev");
    let production = rendered(&kubectl, &python, "production");
    for (overlay, docs) in [("dev", &dev), ("production", &production)] {
        let broken = contract_violations(docs);
        assert!(broken.is_empty(), "{overlay}: {broken:#?}");
    }

    // dev: one API pod, at most one worker, `dev` images.
    let hpa = |docs: &[Value]| {
        find(docs, "HorizontalPodAutoscaler", "editthinker-api").unwrap()["spec"].clone()
    };
    let scaled =
        |docs: &[Value]| find(docs, "ScaledObject", "editthinker-worker").unwrap()["spec"].clone();
    assert_eq!(hpa(&dev)["minReplicas"], 1);
    assert!(
        scaled(&dev)["maxReplicaCount"].as_u64() < scaled(&production)["maxReplicaCount"].as_u64()
    );
    assert!(editthinker_images(&dev).iter().all(|i| i.ends_with(":dev")));

    // production: namespace editthinker, two API pods at least, one always
    // available, images pinned to a release.
    assert!(
        production
            .iter()
            .filter(|d| d["kind"] != "Namespace")
            .all(|d| d["metadata"]["namespace"] == "editthinker"),
        "every production object is in namespace editthinker"
    );
    assert!(find(&production, "Namespace", "editthinker").is_some());
    assert!(hpa(&production)["minReplicas"].as_u64() >= Some(2));
    let pdb = find(&production, "PodDisruptionBudget", "editthinker-api").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let images = editthinker_images(&production);
    assert_eq!(images.len(), 3, "api, worker and migrate: {images:?}");
    for image in images {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        let pinned = image.contains("@sha256:")
            || (tag.split('.').count() == 3 && tag.split('.').all(|n| n.parse::<u32>().is_ok()));
        assert!(pinned, "{image} is not pinned to a release or digest");
    }

    // The checks above can fail: break a copy and each break is reported.
    let mut broken = production.clone();
    for doc in &mut broken {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match (doc["kind"].as_str().unwrap_or_default(), name.as_str()) {
            ("Deployment", "editthinker-worker") => {
                let spec = &mut doc["spec"]["template"]["spec"];
                spec["terminationGracePeriodSeconds"] = json!(10);
                spec["containers"][0]["resources"]["limits"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nvidia.com/gpu");
            }
            ("Deployment", "editthinker-api") => {
                let c = &mut doc["spec"]["template"]["spec"]["containers"][0];
                c["readinessProbe"]["httpGet"]["path"] = json!("/healthz");
                c["securityContext"]["runAsNonRoot"] = json!(false);
            }
            ("ScaledObject", _) => {
                doc["spec"]["triggers"][0]["metadata"]["query"] =
                    json!("SELECT COUNT(*) FROM jobs");
            }
            _ => {}
        }
    }
    broken.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "oops"}, "stringData": {"url": "postgres://u:p@db/x"}}));
    let found = contract_violations(&broken).join("\n");
    for expected in [
        "nvidia.com/gpu",
        "terminationGracePeriodSeconds (Some(10.0))",
        "readiness probe",
        "editthinker-api/api may run as root",
        "queued and running",
        "Secret \"oops\"",
    ] {
        assert!(
            found.contains(expected),
            "{expected:?} not reported in:\n{found}"
        );
    }
}

#[test]
fn the_validator_rejects_broken_objects() {
    let Some(python) = python() else {
        return;
    };
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec:\n  \
        selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    \
        spec: {containers: [{name: c, image: x}]}\n";
    let auth = "apiVersion: keda.sh/v1alpha1\nkind: TriggerAuthentication\nmetadata: {name: db}\n\
        spec: {secretTargetRef: [{parameter: connection, name: s, key: url}]}\n";
    let scaled = |spec: &str| {
        format!(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {{name: w}}\n\
             spec: {{scaleTargetRef: {{name: w}}, {spec}}}\n"
        )
    };
    let trigger = "triggers: [{type: postgresql, authenticationRef: {name: db}, \
        metadata: {query: 'SELECT 1', targetQueryValue: '4'}}]";

    // A well-formed set passes, so what follows fails for its one fault.
    let good = format!("{deployment}---\n{auth}---\n{}", scaled(trigger));
    let (status, report) = validate(&python, &good, &["--complete"]);
    assert_eq!(status, 0, "{:#}", report["errors"]);

    let cases = [
        (
            deployment.replace("image: x", "image: x, imagePullPolicys: Always"),
            "imagePullPolicys",
        ),
        (
            scaled("minReplicaCount: 0"),
            "'triggers' is a required property",
        ),
        (
            scaled(&trigger.replace("'4'", "4")),
            "4 is not of type 'string'",
        ),
        (
            scaled(&trigger.replace("query: 'SELECT 1', ", "")),
            "'query' is a required property",
        ),
        (
            scaled(&format!(
                "minReplicaCount: 3, maxReplicaCount: 2, {trigger}"
            )),
            "above maxReplicaCount",
        ),
        (
            auth.replace(", key: url", ""),
            "'key' is a required property",
        ),
        (
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n".to_string(),
            "Couldn't find schema",
        ),
    ];
    for (yaml, expected) in cases {
        let (status, report) = validate(&python, &yaml, &[]);
        assert_eq!(status, 1, "accepted:\n{yaml}");
        let errors = report["errors"].to_string();
        assert!(
            errors.contains(expected),
            "{expected:?} not in {errors} for:\n{yaml}"
        );
    }

    // A whole deployment's references must resolve.
    let dangling = format!("{deployment}---\n{}", scaled(trigger));
    let (status, report) = validate(&python, &dangling, &["--complete"]);
    assert_eq!(status, 1);
    assert!(report["errors"]
        .to_string()
        .contains("TriggerAuthentication 'db', which is not in the input"));
}

// ---------------------------------------------------------------------------
// Dockerfiles
// ---------------------------------------------------------------------------

/// One instruction, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// A `FROM` and what follows it.
#[derive(Debug)]
struct Stage {
    /// The base image, global `ARG` defaults substituted.
    base: String,
    name: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }

    /// Index of the first instruction `keyword` whose arguments contain `text`.
    fn position(&self, keyword: &str, text: &str) -> Option<usize> {
        self.instructions
            .iter()
            .position(|i| i.keyword == keyword && i.args.contains(text))
    }
}

/// Parses a Dockerfile: comments and blank lines dropped (also inside a
/// continuation, as Docker does), `\` continuations joined, stages split at
/// `FROM`, global `ARG` defaults substituted into the base images.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        logical.push(current);
    }

    let mut globals: Vec<(String, String)> = Vec::new();
    let substitute = |text: &str, vars: &[(String, String)]| {
        let mut out = text.to_string();
        for (name, value) in vars {
            out = out
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        out
    };
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                base: substitute(words.first().copied().unwrap_or_default(), &globals),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { keyword, args });
        } else if keyword == "ARG" {
            let (name, value) = args.split_once('=').unwrap_or((&args, ""));
            let value = substitute(value.trim_matches('"'), &globals);
            globals.push((name.to_string(), value));
        }
    }
    stages
}

/// The JSON-array (exec) form of CMD or ENTRYPOINT.
fn exec_form(instruction: &Instruction) -> Option<Vec<String>> {
    serde_json::from_str(&instruction.args).ok()
}

/// `KEY=VALUE` pairs of a stage's ENV instructions.
fn env_pairs(stage: &Stage) -> Vec<(String, String)> {
    stage
        .all("ENV")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// What one image must be.
struct ImageRules<'a> {
    /// Words the `cargo build` (and the cook) must, or must not, contain.
    build_with: &'a [&'a str],
    build_without: &'a [&'a str],
    /// Substrings of the builder's and the runtime's base images.
    builder_base: &'a str,
    runtime_base: &'a [&'a str],
    /// A runtime without a shell has no RUN.
    runtime_runs: bool,
    ports: &'a [&'a str],
    cmd: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
}

/// Everything in a Dockerfile that breaks `rules`; empty when it keeps them.
fn dockerfile_violations(text: &str, rules: &ImageRules) -> Vec<String> {
    let stages = parse_dockerfile(text);
    let mut v = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            v.push(what);
        }
    };
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    check(
        names == ["chef", "planner", "builder", "runtime"],
        format!("stages are {names:?}, not chef, planner, builder, runtime"),
    );
    if stages.len() != 4 {
        return v;
    }
    let (chef, planner, builder, runtime) = (&stages[0], &stages[1], &stages[2], &stages[3]);
    check(
        chef.base.contains(rules.builder_base)
            && chef.position("RUN", "cargo install cargo-chef").is_some(),
        format!(
            "chef ({}) does not install cargo-chef on {}",
            chef.base, rules.builder_base
        ),
    );
    check(
        planner.base == "chef"
            && planner
                .position("RUN", "cargo chef prepare --recipe-path recipe.json")
                .is_some(),
        "the planner does not prepare recipe.json from the chef stage".into(),
    );
    check(
        builder.base == "chef",
        "the builder does not start from chef".into(),
    );

    // Dependencies are cooked from the recipe alone, then the sources come.
    let recipe = builder.position("COPY", "--from=planner");
    let cook = builder.position("RUN", "cargo chef cook --release");
    let sources = builder
        .instructions
        .iter()
        .position(|i| i.keyword == "COPY" && i.args == ". .");
    let build = builder.position("RUN", "cargo build --release");
    check(
        matches!((recipe, cook, sources, build), (Some(r), Some(c), Some(s), Some(b)) if r < c && c < s && s < b),
        format!(
            "the builder does not copy the recipe, cook, copy the sources, then build \
             (at {recipe:?}, {cook:?}, {sources:?}, {build:?})"
        ),
    );
    for step in [cook, build].into_iter().flatten() {
        let args = &builder.instructions[step].args;
        for word in rules.build_with {
            check(args.contains(word), format!("`{args}` lacks {word}"));
        }
        for word in rules.build_without {
            check(!args.contains(word), format!("`{args}` has {word}"));
        }
    }

    check(
        rules.runtime_base.iter().any(|b| runtime.base.contains(b)),
        format!(
            "the runtime base {} is none of {:?}",
            runtime.base, rules.runtime_base
        ),
    );
    check(
        rules.runtime_runs || runtime.all("RUN").is_empty(),
        "the runtime stage runs commands (it has no shell)".into(),
    );
    check(
        runtime
            .position(
                "COPY",
                "--from=builder /usr/local/bin/editthinker /usr/local/bin/editthinker",
            )
            .is_some(),
        "the runtime does not take the binary from the builder".into(),
    );
    let user = runtime
        .all("USER")
        .last()
        .map(|i| i.args.clone())
        .unwrap_or_default();
    let uid = user.split(':').next().and_then(|u| u.parse::<u32>().ok());
    check(
        uid.is_some_and(|u| u != 0),
        format!("the runtime user {user:?} is not a numeric non-root uid"),
    );
    let mut exposed: Vec<&str> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp"))
        .collect();
    exposed.sort();
    check(
        exposed == rules.ports,
        format!("exposes {exposed:?}, not {:?}", rules.ports),
    );
    let entrypoint = runtime.all("ENTRYPOINT").last().and_then(|i| exec_form(i));
    check(
        entrypoint == Some(vec!["/usr/local/bin/editthinker".to_string()]),
        format!("ENTRYPOINT is {entrypoint:?}"),
    );
    let cmd = runtime.all("CMD").last().and_then(|i| exec_form(i));
    check(
        cmd.as_deref().is_some_and(|c| c == rules.cmd),
        format!("CMD is {cmd:?}, not {:?}", rules.cmd),
    );
    let env = env_pairs(runtime);
    for (key, value) in rules.env {
        check(
            env.iter().any(|(k, v)| k == key && v == value),
            format!("the runtime does not set {key}={value}"),
        );
    }
    check(
        stages.iter().all(|s| s.all("HEALTHCHECK").is_empty()),
        "a HEALTHCHECK is declared (Kubernetes probes decide health)".into(),
    );
    v
}

const API_IMAGE: ImageRules = ImageRules {
    build_with: &["--locked", "--bin editthinker"],
    build_without: &["--features", "local-thinker", "cuda"],
    builder_base: "rust:",
    runtime_base: &["gcr.io/distroless/cc-debian12", "debian:bookworm-slim"],
    runtime_runs: false,
    ports: &["8080", "9090"],
    cmd: &["serve"],
    env: &[
        ("EDITTHINKER_LISTEN", "0.0.0.0:8080"),
        ("EDITTHINKER_METRICS__LISTEN", "0.0.0.0:9090"),
    ],
};

const GPU_IMAGE: ImageRules = ImageRules {
    build_with: &["--locked", "--bin editthinker", "--features cuda"],
    build_without: &[],
    builder_base: "nvidia/cuda:",
    runtime_base: &["nvidia/cuda:"],
    runtime_runs: true,
    ports: &["9090"],
    cmd: &["worker"],
    env: &[("EDITTHINKER_METRICS__LISTEN", "0.0.0.0:9090")],
};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

#[test]
fn the_api_image_keeps_the_contract() {
    let text = read("docker/Dockerfile");
    let broken = dockerfile_violations(&text, &API_IMAGE);
    assert!(broken.is_empty(), "docker/Dockerfile: {broken:#?}");
}

#[test]
fn the_gpu_image_keeps_the_contract() {
    let text = read("docker/Dockerfile.gpu");
    let broken = dockerfile_violations(&text, &GPU_IMAGE);
    assert!(broken.is_empty(), "docker/Dockerfile.gpu: {broken:#?}");

    let stages = parse_dockerfile(&text);
    assert!(stages[0].base.contains("-devel-"), "{}", stages[0].base);
    assert!(stages[3].base.contains("-runtime-"), "{}", stages[3].base);
    // The kernels' target GPU is a build argument, 90 (H100/H200) by default.
    let builder = &stages[2];
    assert!(builder.position("ARG", "CUDA_COMPUTE_CAP=90").is_some());
    assert!(env_pairs(builder).contains(&(
        "CUDA_COMPUTE_CAP".to_string(),
        "${CUDA_COMPUTE_CAP}".to_string()
    )));
    let cook = builder.position("RUN", "cargo chef cook").unwrap();
    assert!(builder.position("ARG", "CUDA_COMPUTE_CAP").unwrap() < cook);
}

#[test]
fn the_dockerfile_checks_catch_breaks() {
    // Continuations (with a comment inside) and both CMD forms parse.
    let stages = parse_dockerfile(
        "ARG BASE=rust:1\nARG IMAGE=${BASE}-slim\nFROM $IMAGE AS one\nRUN a \\\n    # note\n    b \\\n    c\n\
         CMD [\"x\", \"y\"]\nFROM one\nCMD x y\n",
    );
    assert_eq!(stages.len(), 2);
    assert_eq!(
        (stages[0].base.as_str(), stages[0].name.as_str()),
        ("rust:1-slim", "one")
    );
    assert_eq!(stages[0].instructions[0].args, "a b c");
    assert_eq!(
        exec_form(&stages[0].instructions[1]),
        Some(vec!["x".into(), "y".into()])
    );
    assert_eq!(
        (stages[1].base.as_str(), stages[1].name.as_str()),
        ("one", "")
    );
    assert_eq!(exec_form(&stages[1].instructions[0]), None);

    let good = read("docker/Dockerfile");
    let broken = good
        .replace("USER 65532:65532", "USER root")
        .replace(
            "EXPOSE 8080 9090",
            "EXPOSE 8080\nHEALTHCHECK CMD [\"/usr/local/bin/editthinker\", \"--version\"]",
        )
        .replace(
            "RUN cargo build --release --locked --bin editthinker",
            "RUN cargo build --release --locked --features local-thinker --bin editthinker",
        )
        .replace("AS planner", "AS plan");
    let found = dockerfile_violations(&broken, &API_IMAGE).join("\n");
    for expected in ["stages are", "not a numeric non-root uid"] {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
    // With the stage names right, the rest is checked too.
    let found =
        dockerfile_violations(&broken.replace("AS plan", "AS planner"), &API_IMAGE).join("\n");
    for expected in [
        "HEALTHCHECK",
        "exposes [\"8080\"]",
        "has --features",
        "non-root uid",
    ] {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
    // The cook must come before the sources are copied.
    let late_cook = good.replace(
        "RUN cargo chef cook --release --locked --recipe-path recipe.json --bin editthinker\nCOPY . .",
        "COPY . .\nRUN cargo chef cook --release --locked --recipe-path recipe.json --bin editthinker",
    );
    assert_ne!(late_cook, good);
    let found = dockerfile_violations(&late_cook, &API_IMAGE).join("\n");
    assert!(found.contains("cook, copy the sources"), "{found}");
}
