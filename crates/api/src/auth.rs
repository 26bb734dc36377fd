//! Who is calling, and how much they may do (`[auth]`, `[limits]`).
//!
//! Every request but the open ones (health, readiness, the OpenAPI
//! document and its viewer) passes [`authenticate`]: it resolves the
//! [`Caller`] by the configured [`AuthMode`], counts the request against
//! the caller's token bucket, and hands the caller to the handlers, which
//! only ever touch that tenant's jobs. Rate buckets and stream counts live
//! in this process (per replica); the active-jobs limit lives in the
//! database (global).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use editthinker_store::{Store, DEFAULT_TENANT};

use crate::error::ApiError;
use crate::AppState;

/// How requests are authenticated (`[auth] mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: every request acts for [`DEFAULT_TENANT`].
    None,
    /// `Authorization: Bearer et_…`, keys made by `editthinker keys create`.
    ApiKeys,
    /// A trusted gateway names the tenant in this header.
    Gateway {
        /// The header (`[auth] tenant_header`).
        tenant_header: HeaderName,
    },
}

/// The per-process limits on callers.
#[derive(Debug, Clone)]
pub struct CallerLimits {
    /// Sustained requests per second per key (gateway mode: per tenant);
    /// 0 turns the limit off. Not applied in mode `none`.
    pub requests_per_second: u32,
    /// Requests a caller may make at once above the sustained rate.
    pub burst: u32,
    /// Open event streams per tenant in this process; 0: no limit.
    pub max_streams_per_tenant: usize,
}

impl Default for CallerLimits {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 100,
            max_streams_per_tenant: 100,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant whose jobs the request may see.
    pub tenant: Arc<str>,
    /// What the request rate counts against: the key id, or the tenant.
    bucket: Arc<str>,
}

impl Caller {
    fn new(tenant: &str, bucket: String) -> Self {
        Self {
            tenant: tenant.into(),
            bucket: bucket.into(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route without authentication".into()))
    }
}

/// Authentication state of one process: the mode, a short cache of key
/// lookups, the rate buckets and the stream counts.
pub struct Auth {
    mode: AuthMode,
    /// Who every request is in mode `none` (built once).
    anonymous: Caller,
    keys: KeyCache,
    rate: RateLimiter,
    streams: Arc<StreamSlots>,
}

impl Auth {
    /// Authentication in `mode` with `limits`.
    pub fn new(mode: AuthMode, limits: &CallerLimits) -> Self {
        Self {
            mode,
            anonymous: Caller::new(DEFAULT_TENANT, DEFAULT_TENANT.into()),
            keys: KeyCache::default(),
            rate: RateLimiter::new(limits.requests_per_second, limits.burst),
            streams: Arc::new(StreamSlots::new(limits.max_streams_per_tenant)),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// Takes one of the tenant's stream slots in this process, or refuses
    /// with `429` when all are open.
    pub(crate) fn open_stream(&self, tenant: &Arc<str>) -> Result<StreamSlot, ApiError> {
        self.streams
            .acquire(tenant)
            .ok_or_else(|| ApiError::RateLimited {
                detail: format!(
                    "this tenant already has {} event streams open on this replica \
                     ([limits] max_streams_per_tenant); close one first",
                    self.streams.max
                ),
                retry_after: STREAM_RETRY_AFTER,
            })
    }

    async fn caller(&self, store: &dyn Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match &self.mode {
            AuthMode::None => Ok(self.anonymous.clone()),
            AuthMode::Gateway { tenant_header } => {
                let tenant = headers
                    .get(tenant_header)
                    .and_then(|v| v.to_str().ok())
                    .filter(|t| valid_tenant(t))
                    .ok_or_else(|| {
                        ApiError::Unauthorized(format!(
                            "the gateway did not name a tenant: header {tenant_header} must hold 1 to 64 of A-Z a-z 0-9 . _ -"
                        ))
                    })?;
                Ok(Caller::new(tenant, format!("tenant:{tenant}")))
            }
            AuthMode::ApiKeys => {
                let key = bearer(headers).ok_or_else(|| {
                    ApiError::Unauthorized(
                        "send an API key: Authorization: Bearer et_… (editthinker keys create)"
                            .into(),
                    )
                })?;
                self.keys.lookup(store, key).await?.ok_or_else(|| {
                    ApiError::Unauthorized("the API key is unknown or revoked".into())
                })
            }
        }
    }
}

/// `Retry-After` when the stream limit refuses: streams close when their
/// job finishes, which is seconds for most jobs.
const STREAM_RETRY_AFTER: u64 = 5;

/// Routes anyone may call: probes, the API's own description, and the
/// viewer's pages (which ask for a key before calling the API).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/openapi.json" | "/docs" | "/ui"
    ) || path.starts_with("/ui/")
}

/// A tenant name: 1 to 64 of `A-Z a-z 0-9 . _ -` (what `keys create
/// --tenant` and a gateway's header may hold).
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| t.starts_with(KEY_PREFIX))
}

/// The middleware: header size, then the caller, then its request rate.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > state.limits.max_header_bytes {
        return ApiError::HeadersTooLarge(format!(
            "the request's headers are {header_bytes} bytes, over the limit of {}",
            state.limits.max_header_bytes
        ))
        .into_response();
    }
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let auth = &state.auth;
    let caller = match auth.caller(state.store.as_ref(), request.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if auth.mode != AuthMode::None {
        if let Err(wait) = auth.rate.take(&caller.bucket, Instant::now()) {
            return ApiError::RateLimited {
                detail: format!(
                    "over {} requests per second for this key on this replica ([limits] requests_per_second)",
                    auth.rate.per_second
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
            .into_response();
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

// ---- keys ---------------------------------------------------------------------

/// What every API key starts with.
pub const KEY_PREFIX: &str = "et_";

/// Characters of a key kept (as `prefix`) to tell keys apart in listings.
const SHOWN_PREFIX_CHARS: usize = 10;

/// A new random key: `et_` and 43 characters of base64url (256 bits).
pub fn generate_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a key: hex SHA-256. Keys are 256 random bits, so a
/// fast hash is as safe as a slow one and costs nothing per request.
pub fn hash_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The part of a key shown in listings.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(SHOWN_PREFIX_CHARS).collect()
}

/// How long a key lookup is trusted: a revoked key stops working on every
/// replica within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Entries kept before the cache is emptied (bounds memory under a flood
/// of made-up keys).
const KEY_CACHE_MAX: usize = 10_000;

/// Recent key lookups, found or not, by hash.
#[derive(Default)]
struct KeyCache {
    entries: Mutex<HashMap<String, (Option<Caller>, Instant)>>,
}

impl KeyCache {
    async fn lookup(&self, store: &dyn Store, key: &str) -> Result<Option<Caller>, ApiError> {
        let hash = hash_key(key);
        if let Some((caller, at)) = self.entries.lock().expect("key cache").get(&hash) {
            if at.elapsed() < KEY_CACHE_TTL {
                return Ok(caller.clone());
            }
        }
        let caller = store
            .find_api_key(&hash)
            .await?
            .map(|row| Caller::new(&row.tenant, format!("key:{}", row.id)));
        let mut entries = self.entries.lock().expect("key cache");
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (caller.clone(), Instant::now()));
        Ok(caller)
    }
}

// ---- request rate ---------------------------------------------------------------

/// Token buckets by caller: `burst` requests at once, refilled at
/// `per_second`.
pub struct RateLimiter {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones are forgotten.
const BUCKETS_MAX: usize = 100_000;

impl RateLimiter {
    /// A limiter; `per_second` 0 lets everything through.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `caller`'s bucket at `now`; when it is empty,
    /// how long until the next token.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_second);
        let burst = f64::from(self.burst);
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() >= BUCKETS_MAX {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(caller.into()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled =
            bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = refilled.min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

// ---- open streams ---------------------------------------------------------------

/// Open event streams per tenant in this process.
struct StreamSlots {
    max: usize,
    open: Mutex<HashMap<Arc<str>, usize>>,
}

/// One open stream's slot; dropping it (the stream ends) frees it.
pub(crate) struct StreamSlot {
    slots: Arc<StreamSlots>,
    tenant: Arc<str>,
}

impl StreamSlots {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(self: &Arc<Self>, tenant: &Arc<str>) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("stream slots");
        let count = open.entry(tenant.clone()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            slots: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("stream slots");
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("k", t0).is_ok());
        }
        let wait = limiter.take("k", t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // Another caller has its own bucket.
        assert!(limiter.take("other", t0).is_ok());
        // A tenth of a second later one more token is there, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.take("k", t1).is_ok());
        assert!(limiter.take("k", t1).is_err());
        // Refills stop at the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.take("k", t2).is_ok());
        }
        assert!(limiter.take("k", t2).is_err());
        assert!(RateLimiter::new(0, 1).take("k", t0).is_ok());
    }

    #[test]
    fn stream_slots_are_counted_per_tenant_and_freed_on_drop() {
        let slots = Arc::new(StreamSlots::new(2));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let first = slots.acquire(&a).unwrap();
        let _second = slots.acquire(&a).unwrap();
        assert!(slots.acquire(&a).is_none());
        assert!(slots.acquire(&b).is_some());
        drop(first);
        assert!(slots.acquire(&a).is_some());
    }

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 43);
        assert_ne!(key, generate_key());
        assert_eq!(hash_key(&key), hash_key(&key));
        assert_eq!(hash_key(&key).len(), 64);
        assert_eq!(key_prefix(&key).len(), SHOWN_PREFIX_CHARS);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        assert_eq!(bearer(&headers), Some(key.as_str()));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn tenant_names_are_short_and_plain() {
        assert!(valid_tenant("acme-prod.eu_1"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"x".repeat(65)));
    }
}
