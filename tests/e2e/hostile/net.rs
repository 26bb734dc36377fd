//! Hostile cases for outbound requests on a client's behalf: the
//! special-purpose address ranges and environment proxies.

use serde_json::json;

use crate::common::*;

/// The signing secret (`whsec_` + base64 of 24 bytes), so that creates
/// asking for webhooks get as far as the URL check.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Issue 20, finding 7: IPv6 forms carrying a forbidden IPv4 address
/// (NAT64, IPv4-translated, 6to4) and IPv4 ranges the old rule missed
/// (benchmarking) are refused for image and webhook URLs, with private
/// URLs not allowed (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_purpose_addresses_are_refused_for_images_and_webhooks() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    env.migrate();
    let config = env.config("api", &backends);
    // The harness allows private image URLs; this test is about the default.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "allow_private_image_urls = true",
        "allow_private_image_urls = false",
    );
    assert!(!text.contains("allow_private_webhook_urls"));
    std::fs::write(&config, text).unwrap();
    let service = Service::start_with_env("api", &config, &[("WEBHOOK_SECRET", SECRET)]);

    for url in [
        "http://[64:ff9b::7f00:1]:9/x.png",
        "http://[::ffff:0:127.0.0.1]:9/x.png",
        "http://[2002:7f00:1::]:9/x.png",
        "http://198.18.0.1:9/x.png",
    ] {
        let body = json!({"image": {"url": url}, "instruction": "add a hat"});
        let (status, problem) = post_json(&service, "/v1/jobs", &body).await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["code"], "image_url_forbidden", "{url}: {problem}");
        assert_eq!(problem["field"], "image.url", "{url}: {problem}");
    }

    let mut body = job_body(&png(16, 16, [1, 2, 3]), "add a hat", json!({}));
    body["webhook"] = json!({"url": "http://[64:ff9b::a9fe:a9fe]/hook"});
    let (status, problem) = post_json(&service, "/v1/jobs", &body).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "webhook_url_forbidden", "{problem}");
    assert_eq!(problem["field"], "webhook.url", "{problem}");

    // The same create with a public webhook address is accepted: the
    // refusal above is the address's, not the request's.
    body["webhook"] = json!({"url": "http://[64:ff9b::808:808]/hook"});
    let (status, job) = post_json(&service, "/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");

    let (_, list) = get_json(&service.url("/v1/jobs")).await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        1,
        "only the accepted create was stored: {list}"
    );
}
