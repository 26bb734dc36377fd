//! One delivery attempt: a signed POST to a checked, pinned destination.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use editthinker_core::net::is_forbidden;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::{Host, Url};

use crate::{envelope, sign, Secret};

/// The `user-agent` of every webhook call, so receivers can tell them from
/// other traffic.
pub const USER_AGENT: &str = "editthinker-webhooks";

/// The longest webhook URL [`check_url`] accepts, in characters; anything
/// longer is almost certainly a mistake or an attempt to bloat our rows.
pub const MAX_URL_LEN: usize = 2048;

/// Destinations whose HTTP client (and its open connections) a [`Deliverer`]
/// keeps at once; past it the least recently used is dropped.
pub const MAX_CACHED_CLIENTS: usize = 256;

/// How long a destination's client is kept without a delivery; its idle
/// connections are closed after the same time.
pub const CLIENT_IDLE: Duration = Duration::from_secs(90);

/// One event to deliver to one URL. The same request is passed again for
/// every retry.
#[derive(Debug, Clone)]
pub struct DeliveryRequest {
    /// The `webhook-id` header: stable across retries so the receiver can
    /// drop duplicates. Should not contain `.` (it is a delimiter in the
    /// signed content) and must be a valid header value.
    pub id: String,
    /// Where to POST; checked again with [`check_url`] on every attempt.
    pub url: String,
    /// The envelope's `type`, e.g. `job.succeeded`.
    pub kind: String,
    /// When the event happened (the envelope's `timestamp`), not the attempt.
    pub timestamp: DateTime<Utc>,
    /// The envelope's `data`.
    pub data: serde_json::Value,
    /// Signs the attempt (the job's tenant's secret, or the server's).
    pub secret: Secret,
}

/// The result of one attempt, for the caller to record and to decide on a
/// retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered {
        /// The HTTP status the receiver answered.
        status: u16,
    },
    /// The receiver answered `410 Gone`: it wants no more of these events,
    /// so the caller should neither retry nor send it the job's other events.
    Gone {
        /// A short reason, like [`Outcome::Failed`]'s.
        error: String,
    },
    /// Anything else: a non-2xx answer (3xx included, since redirects are
    /// not followed), a timeout, a refused or unreachable destination.
    Failed {
        /// The HTTP status, when the receiver answered at all.
        status: Option<u16>,
        /// A short, human-readable reason, fit to show the webhook's owner
        /// (e.g. `HTTP 500`, `timed out after 10 s`).
        error: String,
    },
}

fn failed(error: impl Into<String>) -> Outcome {
    Outcome::Failed {
        status: None,
        error: error.into(),
    }
}

/// Sends webhook attempts. One per process is meant to be shared by all
/// delivery tasks (behind an `Arc`), since it owns the per-host limits.
#[derive(Debug)]
pub struct Deliverer {
    timeout: Duration,
    allow_private: bool,
    max_per_host: usize,
    /// One semaphore per destination host, so a slow receiver ties up at most
    /// `max_per_host` of our delivery tasks. Entries are removed when no
    /// attempt uses them, so the map does not grow with every host ever seen.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One client per destination, so consecutive deliveries reuse its
    /// connections; each is pinned to the addresses checked when it was made.
    clients: Mutex<HashMap<Destination, Pinned>>,
    max_clients: usize,
    client_idle: Duration,
    /// [`is_forbidden`], replaced only by this file's tests so that a
    /// loopback receiver can stand in for a public address.
    forbidden: fn(IpAddr) -> bool,
    /// Name lookups; the tests in this file script the answers.
    resolver: Resolver,
}

/// Where a cached client sends: the URL's scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    scheme: String,
    host: String,
    port: u16,
}

/// A cached client and the checked addresses it may connect to.
#[derive(Debug)]
struct Pinned {
    addrs: Vec<SocketAddr>,
    client: reqwest::Client,
    last_used: Instant,
}

#[derive(Debug)]
enum Resolver {
    System,
    #[cfg(test)]
    Scripted(Arc<Mutex<Vec<IpAddr>>>),
}

impl Resolver {
    async fn lookup(&self, domain: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Resolver::System => Ok(tokio::net::lookup_host((domain, port)).await?.collect()),
            #[cfg(test)]
            Resolver::Scripted(ips) => Ok(ips
                .lock()
                .unwrap()
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()),
        }
    }
}

impl Deliverer {
    /// `timeout` bounds each attempt from resolution to response headers
    /// (waiting for a per-host slot is not counted: that is our queue, not
    /// the receiver's slowness). `allow_private` lets destinations resolve to
    /// the addresses [`is_forbidden`] rejects (for development and tests).
    /// `max_per_host` is raised to 1 if 0, which would block every attempt.
    pub fn new(timeout: Duration, allow_private: bool, max_per_host: usize) -> Self {
        Deliverer {
            timeout,
            allow_private,
            max_per_host: max_per_host.clamp(1, Semaphore::MAX_PERMITS),
            hosts: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            max_clients: MAX_CACHED_CLIENTS,
            client_idle: CLIENT_IDLE,
            forbidden: is_forbidden,
            resolver: Resolver::System,
        }
    }

    /// Makes ONE attempt to deliver `req`, with a fresh `webhook-timestamp`
    /// and signature; retrying is the caller's business
    /// ([`crate::RetrySchedule`]). Never panics on bad input: an unusable URL
    /// or id comes back as [`Outcome::Failed`]. Cancel-safe: dropping the
    /// future releases the host slot.
    pub async fn deliver(&self, req: &DeliveryRequest) -> Outcome {
        let url = match check_url(&req.url) {
            Ok(url) => url,
            Err(e) => return failed(e),
        };
        let Some(host) = url.host_str() else {
            return failed("webhook URL has no host");
        };
        let _slot = self.slot(host).await;
        match tokio::time::timeout(self.timeout, self.attempt(req, &url)).await {
            Ok(outcome) => outcome,
            Err(_) => failed(format!("timed out after {}", human(self.timeout))),
        }
    }

    async fn attempt(&self, req: &DeliveryRequest, url: &Url) -> Outcome {
        let addrs = match self.resolve(url).await {
            Ok(addrs) => addrs,
            Err(e) => return failed(e),
        };
        let client = match self.client_for(url, addrs) {
            Ok(client) => client,
            Err(e) => return failed(e),
        };

        let body = envelope(&req.kind, req.timestamp, &req.data);
        let now = Utc::now().timestamp();
        let signature = sign(&req.secret, &req.id, now, &body);
        let sent = client
            .post(url.clone())
            .header("webhook-id", &req.id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => classify(response.status()),
            Err(e) => failed(describe(&e)),
        }
    }

    /// The addresses `url` will be reached at, refused if any is forbidden
    /// (a name mixing public and private answers is treated as private).
    async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        // http and https always have a known default port.
        let port = url.port_or_known_default().unwrap_or(80);
        let (name, addrs): (String, Vec<SocketAddr>) = match url.host() {
            Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Ipv6(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Domain(domain)) => {
                let found = self
                    .resolver
                    .lookup(domain, port)
                    .await
                    .map_err(|e| format!("resolve {domain}: {e}"))?;
                (domain.to_owned(), found)
            }
            None => return Err("webhook URL has no host".into()),
        };
        let mut addrs = addrs;
        // In order, so that a resolver rotating its answers still matches
        // the cached client's pin.
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("resolve {name}: no addresses"));
        }
        if !self.allow_private {
            if let Some(bad) = addrs
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| (self.forbidden)(*ip))
            {
                let shown = if name == bad.to_string() {
                    name
                } else {
                    format!("{name} ({bad})")
                };
                return Err(format!(
                    "destination {shown} is a private address (allow_private_webhook_urls is false)"
                ));
            }
        }
        Ok(addrs)
    }

    /// The client for `url`'s destination, pinned to `addrs` (just resolved
    /// and checked): the cached one when it is pinned to exactly these
    /// addresses, else a new one that replaces it, so a changed DNS answer
    /// never reaches a connection made for the old one.
    fn client_for(&self, url: &Url, addrs: Vec<SocketAddr>) -> Result<reqwest::Client, String> {
        let key = Destination {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or(80),
        };
        let now = Instant::now();
        {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pinned) = clients.get_mut(&key) {
                if pinned.addrs == addrs {
                    pinned.last_used = now;
                    return Ok(pinned.client.clone());
                }
            }
        }
        // No proxy: a proxy would resolve the name itself and defeat the
        // check. Idle connections go when the cache would forget the client.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(self.client_idle)
            .user_agent(USER_AGENT);
        if let Some(Host::Domain(domain)) = url.host() {
            // Connect only to the addresses just checked, so a DNS answer
            // that changes between check and connect cannot point us inside.
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        let client = builder.build().map_err(|e| describe(&e))?;

        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.retain(|_, p| now.saturating_duration_since(p.last_used) < self.client_idle);
        if clients.len() >= self.max_clients && !clients.contains_key(&key) {
            let oldest = clients
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
        clients.insert(
            key,
            Pinned {
                addrs,
                client: client.clone(),
                last_used: now,
            },
        );
        Ok(client)
    }

    /// Waits for one of `host`'s `max_per_host` slots.
    async fn slot(&self, host: &str) -> HostSlot<'_> {
        let semaphore = self
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_host)))
            .clone();
        let mut slot = HostSlot {
            hosts: &self.hosts,
            host: host.to_owned(),
            semaphore: Some(semaphore.clone()),
            permit: None,
        };
        // The semaphore is never closed, so acquiring only fails if it were.
        slot.permit = semaphore.acquire_owned().await.ok();
        slot
    }
}

/// A held per-host slot; on drop it frees the slot and forgets the host's
/// semaphore if no other attempt holds or awaits it.
struct HostSlot<'a> {
    hosts: &'a Mutex<HashMap<String, Arc<Semaphore>>>,
    host: String,
    semaphore: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for HostSlot<'_> {
    fn drop(&mut self) {
        self.permit = None;
        self.semaphore = None;
        // Clones are only taken under this lock, so a count of 1 (the map's
        // own) cannot rise while we look at it.
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if hosts
            .get(&self.host)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            hosts.remove(&self.host);
        }
    }
}

fn classify(status: StatusCode) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Delivered { status: code }
    } else if status == StatusCode::GONE {
        Outcome::Gone {
            error: "HTTP 410 Gone".into(),
        }
    } else if status.is_redirection() {
        Outcome::Failed {
            status: Some(code),
            error: format!("HTTP {code} (redirects are not followed)"),
        }
    } else {
        Outcome::Failed {
            status: Some(code),
            error: format!("HTTP {code}"),
        }
    }
}

/// A reqwest error as `connect: <innermost cause>` or `request: <…>`: the
/// outer layers only repeat the URL, which the owner already knows.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let stage = if e.is_connect() { "connect" } else { "request" };
    format!("{stage}: {cause}")
}

fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Validates a webhook URL when it is registered, so mistakes are reported to
/// the client at once instead of as failed deliveries later: http or https,
/// a host, no `user:password@` (credentials would be stored and logged in the
/// clear; receivers authenticate us by the signature), at most
/// [`MAX_URL_LEN`] characters. Whether the host is private is decided at
/// delivery time, since DNS answers can change after registration.
pub fn check_url(url: &str) -> Result<Url, String> {
    if url.chars().count() > MAX_URL_LEN {
        return Err(format!(
            "webhook URL is longer than {MAX_URL_LEN} characters"
        ));
    }
    let parsed = Url::parse(url).map_err(|e| format!("webhook URL is not valid: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "webhook URL must use http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host().is_none() {
        return Err("webhook URL has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("webhook URL must not contain credentials".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_url_accepts_plain_http_and_https() {
        for ok in [
            "https://hooks.example.com/editthinker",
            "http://example.com:8080/a?b=c",
            "https://[2001:db8::1]/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn check_url_rejects_with_a_reason() {
        let cases = [
            ("ftp://example.com/", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("not a url", "not valid"),
            ("https://", "not valid"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
        ];
        for (url, reason) in cases {
            let err = check_url(url).unwrap_err();
            assert!(err.contains(reason), "{url}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long).unwrap_err().contains("longer than"));
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(at_limit.len(), MAX_URL_LEN);
        assert!(check_url(&at_limit).is_ok());
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(
            classify(StatusCode::NO_CONTENT),
            Outcome::Delivered { status: 204 }
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Failed {
                status: Some(500),
                error: "HTTP 500".into()
            }
        );
        assert!(matches!(
            classify(StatusCode::FOUND),
            Outcome::Failed { status: Some(302), ref error } if error.contains("redirect")
        ));
    }

    #[test]
    fn a_410_is_gone_not_failed() {
        assert_eq!(
            classify(StatusCode::GONE),
            Outcome::Gone {
                error: "HTTP 410 Gone".into()
            }
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
    }

    #[tokio::test]
    async fn host_entries_are_forgotten_when_unused() {
        let d = Deliverer::new(Duration::from_secs(1), false, 2);
        let a = d.slot("a.example").await;
        let b = d.slot("a.example").await;
        assert_eq!(d.hosts.lock().unwrap().len(), 1);
        drop(a);
        assert_eq!(d.hosts.lock().unwrap().len(), 1, "b still holds it");
        drop(b);
        assert!(d.hosts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unusable_urls_fail_without_a_request() {
        let d = Deliverer::new(Duration::from_secs(1), false, 1);
        let req = DeliveryRequest {
            id: "msg_1".into(),
            url: "ftp://example.com/".into(),
            kind: "k".into(),
            timestamp: Utc::now(),
            data: serde_json::Value::Null,
            secret: Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        };
        assert!(matches!(
            d.deliver(&req).await,
            Outcome::Failed { status: None, ref error } if error.contains("http or https")
        ));
    }

    /// A deliverer for `http://hooks.test:{port}/`, whose name resolves to
    /// what the returned list holds at each attempt. 127.0.0.1 and 127.0.0.2
    /// stand in for public addresses; every other forbidden address stays
    /// forbidden.
    fn scripted(answer: &[IpAddr]) -> (Deliverer, Arc<Mutex<Vec<IpAddr>>>) {
        let answers = Arc::new(Mutex::new(answer.to_vec()));
        let mut d = Deliverer::new(Duration::from_secs(5), false, 4);
        d.resolver = Resolver::Scripted(answers.clone());
        d.forbidden =
            |ip| is_forbidden(ip) && !matches!(ip.to_string().as_str(), "127.0.0.1" | "127.0.0.2");
        (d, answers)
    }

    /// A receiver on `ip:port` answering 204 and counting requests.
    async fn receiver(ip: &str, port: u16) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let app = axum::Router::new().fallback(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (port, count)
    }

    fn to(url: String) -> DeliveryRequest {
        DeliveryRequest {
            id: "msg_1".into(),
            url,
            kind: "k".into(),
            timestamp: Utc::now(),
            data: serde_json::Value::Null,
            secret: Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        }
    }

    fn pinned(d: &Deliverer) -> Vec<Vec<SocketAddr>> {
        let clients = d.clients.lock().unwrap();
        clients.values().map(|p| p.addrs.clone()).collect()
    }

    fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
        n.load(std::sync::atomic::Ordering::SeqCst)
    }

    const LOCAL_1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const LOCAL_2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[tokio::test]
    async fn a_changed_dns_answer_replaces_the_pinned_client() {
        let (port, first) = receiver("127.0.0.1", 0).await;
        let (_, second) = receiver("127.0.0.2", port).await;
        let (d, answers) = scripted(&[LOCAL_1]);
        let req = to(format!("http://hooks.test:{port}/h"));

        assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        assert_eq!(pinned(&d), [vec![SocketAddr::new(LOCAL_1, port)]]);

        // The old client still holds an open connection to 127.0.0.1; the
        // new answer must be what is connected to.
        *answers.lock().unwrap() = vec![LOCAL_2];
        assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        assert_eq!((count(&first), count(&second)), (2, 1));
        assert_eq!(pinned(&d), [vec![SocketAddr::new(LOCAL_2, port)]]);
    }

    #[tokio::test]
    async fn a_cached_destination_now_resolving_to_a_forbidden_address_is_refused() {
        let (port, hits) = receiver("127.0.0.1", 0).await;
        let (d, answers) = scripted(&[LOCAL_1]);
        let req = to(format!("http://hooks.test:{port}/h"));
        assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        assert_eq!(pinned(&d).len(), 1, "the client is cached");

        // The cached client's address is still in the answer, but the
        // answer as a whole is not acceptable any more.
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        *answers.lock().unwrap() = vec![LOCAL_1, metadata];
        let Outcome::Failed {
            status: None,
            error,
        } = d.deliver(&req).await
        else {
            panic!("a forbidden answer was delivered to");
        };
        assert!(
            error.contains("hooks.test (169.254.169.254) is a private address"),
            "{error}"
        );
        *answers.lock().unwrap() = vec!["127.0.0.3".parse().unwrap()];
        assert!(matches!(
            d.deliver(&req).await,
            Outcome::Failed { status: None, ref error } if error.contains("private address")
        ));
        assert_eq!(count(&hits), 1, "only the first attempt was sent");
    }

    #[tokio::test]
    async fn the_client_cache_is_bounded_in_size_and_age() {
        let mut d = Deliverer::new(Duration::from_secs(5), true, 4);
        d.max_clients = 2;
        d.client_idle = Duration::from_millis(500);
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (port, _) = receiver("127.0.0.1", 0).await;
            ports.push(port);
        }
        let addr = |port: u16| vec![SocketAddr::new(LOCAL_1, port)];
        for port in &ports {
            let req = to(format!("http://127.0.0.1:{port}/h"));
            assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        }
        // The least recently used (the first) made room for the third.
        let mut kept = pinned(&d);
        kept.sort();
        let mut want = vec![addr(ports[1]), addr(ports[2])];
        want.sort();
        assert_eq!(kept, want);

        tokio::time::sleep(Duration::from_millis(700)).await;
        let req = to(format!("http://127.0.0.1:{}/h", ports[0]));
        assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 204 });
        assert_eq!(pinned(&d), [addr(ports[0])], "idle clients were dropped");
    }
}
