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
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
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

/// What protects key lookups from unauthenticated floods (`[auth]`; issue
/// 20, finding 9): each failed authentication costs its client address a
/// token, and an address without tokens is answered 429 before any lookup;
/// unknown keys are remembered for a while so a repeated one costs no
/// query.
#[derive(Debug, Clone)]
pub struct FailedAuthLimits {
    /// Failed authentications an address may make per minute (also the
    /// burst); 0 turns the limit off. Only counted in mode `api_keys`.
    pub per_minute_per_address: u32,
    /// How long a key found unknown is answered from memory.
    pub negative_cache: Duration,
    /// Where the client address comes from: the connection's peer when
    /// `None`; else the last address in this header (set by a gateway,
    /// which every request must pass: a client could forge it otherwise).
    pub client_address_header: Option<HeaderName>,
}

impl Default for FailedAuthLimits {
    fn default() -> Self {
        Self {
            per_minute_per_address: 60,
            negative_cache: Duration::from_secs(30),
            client_address_header: None,
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
    failures: FailureLimiter,
    client_address_header: Option<HeaderName>,
}

impl Auth {
    /// Authentication in `mode` with `limits`; failed authentications are
    /// limited by [`FailedAuthLimits`]'s defaults until
    /// [`Auth::with_failed_auth_limits`] says otherwise.
    pub fn new(mode: AuthMode, limits: &CallerLimits) -> Self {
        editthinker_core::metrics::auth_registered();
        let guard = FailedAuthLimits::default();
        Self {
            mode,
            anonymous: Caller::new(DEFAULT_TENANT, DEFAULT_TENANT.into()),
            keys: KeyCache::new(guard.negative_cache),
            rate: RateLimiter::new(limits.requests_per_second, limits.burst),
            streams: Arc::new(StreamSlots::new(limits.max_streams_per_tenant)),
            failures: FailureLimiter::new(guard.per_minute_per_address),
            client_address_header: guard.client_address_header,
        }
    }

    /// The same, with `limits` on failed authentications.
    pub fn with_failed_auth_limits(mut self, limits: FailedAuthLimits) -> Self {
        self.keys = KeyCache::new(limits.negative_cache);
        self.failures = FailureLimiter::new(limits.per_minute_per_address);
        self.client_address_header = limits.client_address_header;
        self
    }

    /// The address failed authentications count against: the configured
    /// gateway header's last address, else (no such header, or not an
    /// address) the connection's peer. `None` when neither is known (a
    /// router served without the API's server).
    fn client_address(&self, request: &Request) -> Option<IpAddr> {
        let forwarded = self.client_address_header.as_ref().and_then(|name| {
            // The last entry is the one the gateway itself appended (a
            // client may send earlier ones).
            request
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|a| a.trim().parse().ok())
        });
        forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
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

    async fn caller(
        &self,
        store: &dyn Store,
        headers: &HeaderMap,
        address: Option<IpAddr>,
    ) -> Result<Caller, ApiError> {
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
                let now = Instant::now();
                let result = match bearer(headers) {
                    None => {
                        self.throttle(address, now)?;
                        Err(ApiError::Unauthorized(
                            "send an API key: Authorization: Bearer et_… (editthinker keys create)"
                                .into(),
                        ))
                    }
                    Some(key) => self.key_caller(store, key, address, now).await?,
                };
                if result.is_err() {
                    if let Some(address) = address {
                        self.failures.fail(address, now);
                    }
                }
                result
            }
        }
    }

    /// 429 when `address` has used up its failed authentications.
    fn throttle(&self, address: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        let Some(address) = address else {
            return Ok(());
        };
        self.failures.check(address, now).map_err(|wait| {
            editthinker_core::metrics::auth_throttled();
            ApiError::RateLimited {
                detail: format!(
                    "too many failed authentications from this address: over {} a minute \
                     ([auth] failed_auth_per_minute_per_address)",
                    self.failures.per_minute
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// The caller a key stands for; `Ok(Err(401))` when unknown. A key seen
    /// valid recently passes even from a throttled address (an attacker
    /// cannot make one up); any other key from a throttled address is
    /// answered 429 before it costs a lookup.
    async fn key_caller(
        &self,
        store: &dyn Store,
        key: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Result<Caller, ApiError>, ApiError> {
        let unknown = || ApiError::Unauthorized("the API key is unknown or revoked".into());
        let hash = hash_key(key);
        let cached = self.keys.cached(&hash, now);
        if let Some(Some(caller)) = cached {
            return Ok(Ok(caller));
        }
        if !self.keys.recently_valid(&hash, now) {
            self.throttle(address, now)?;
        }
        if cached.is_some() {
            return Ok(Err(unknown()));
        }
        let found = store.find_api_key(&hash).await?;
        editthinker_core::metrics::auth_key_lookup(found.is_some());
        let caller = found.map(|row| Caller::new(&row.tenant, format!("key:{}", row.id)));
        self.keys.remember(hash, caller.clone(), now);
        Ok(caller.ok_or_else(unknown))
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

/// Header fields a request may have (hyper's default limit, answered here
/// with a problem body).
pub const MAX_HEADER_FIELDS: usize = 100;

/// The middleware: header size and count, then the caller, then its
/// request rate.
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
    // Hyper parses up to `server::MAX_PARSED_HEADERS` fields; the limit is
    // enforced here so the answer is a problem body, not hyper's bare 431.
    let fields = request.headers().len();
    if fields > MAX_HEADER_FIELDS {
        return ApiError::HeadersTooLarge(format!(
            "the request has {fields} header fields, over the limit of {MAX_HEADER_FIELDS}"
        ))
        .into_response();
    }
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let auth = &state.auth;
    let address = auth.client_address(&request);
    let caller = match auth
        .caller(state.store.as_ref(), request.headers(), address)
        .await
    {
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

/// How long a found key is trusted: a revoked key stops working on every
/// replica within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// How long a key found valid lets its callers past the failed-auth
/// limit (it is still looked up every [`KEY_CACHE_TTL`], so revocation
/// is not delayed).
const RECENTLY_VALID: Duration = Duration::from_secs(600);

/// Entries each map keeps before it is emptied (bounds memory under a
/// flood of made-up keys; unknown keys have their own map, so a flood
/// never evicts the found ones).
const KEY_CACHE_MAX: usize = 10_000;

/// Recent key lookups by hash: found keys for [`KEY_CACHE_TTL`], unknown
/// ones for the configured negative TTL.
struct KeyCache {
    negative_ttl: Duration,
    found: Mutex<HashMap<String, (Caller, Instant)>>,
    unknown: Mutex<HashMap<String, Instant>>,
}

impl KeyCache {
    fn new(negative_ttl: Duration) -> Self {
        Self {
            negative_ttl,
            found: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(Some(caller))`: found within the TTL; `Some(None)`: unknown
    /// within the negative TTL; `None`: look it up.
    fn cached(&self, hash: &str, now: Instant) -> Option<Option<Caller>> {
        if let Some((caller, at)) = self.found.lock().expect("key cache").get(hash) {
            if now.saturating_duration_since(*at) < KEY_CACHE_TTL {
                return Some(Some(caller.clone()));
            }
        }
        let unknown = self.unknown.lock().expect("key cache");
        match unknown.get(hash) {
            Some(at) if now.saturating_duration_since(*at) < self.negative_ttl => Some(None),
            _ => None,
        }
    }

    /// Whether `hash` was found valid within [`RECENTLY_VALID`].
    fn recently_valid(&self, hash: &str, now: Instant) -> bool {
        self.found
            .lock()
            .expect("key cache")
            .get(hash)
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < RECENTLY_VALID)
    }

    /// Remembers a lookup's result.
    fn remember(&self, hash: String, caller: Option<Caller>, now: Instant) {
        match caller {
            Some(caller) => {
                self.unknown.lock().expect("key cache").remove(&hash);
                let mut found = self.found.lock().expect("key cache");
                if found.len() >= KEY_CACHE_MAX {
                    found.retain(|_, (_, at)| now.saturating_duration_since(*at) < RECENTLY_VALID);
                    if found.len() >= KEY_CACHE_MAX {
                        found.clear();
                    }
                }
                found.insert(hash, (caller, now));
            }
            None => {
                // A revoked key must not keep passing the limit.
                self.found.lock().expect("key cache").remove(&hash);
                if self.negative_ttl.is_zero() {
                    return;
                }
                let mut unknown = self.unknown.lock().expect("key cache");
                if unknown.len() >= KEY_CACHE_MAX {
                    unknown.clear();
                }
                unknown.insert(hash, now);
            }
        }
    }
}

// ---- failed authentications ------------------------------------------------------

/// Token buckets of failed authentications by client address: each
/// failure takes a token, `per_minute` come back a minute, at most
/// `per_minute` are kept. Successes take nothing, so a busy client with a
/// good key is never throttled by it.
struct FailureLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// The tokens `bucket` holds at `now`, refilled up to the limit (the
    /// stored bucket is not changed).
    fn tokens(&self, bucket: &Bucket, now: Instant) -> f64 {
        (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate())
            .min(f64::from(self.per_minute))
    }

    /// Whether `address` may still try at `now`; else how long until it
    /// may.
    fn check(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let buckets = self.buckets.lock().expect("failure buckets");
        match buckets.get(&address) {
            Some(bucket) => {
                let tokens = self.tokens(bucket, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - tokens) / self.rate()))
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication of `address` at `now`.
    fn fail(&self, address: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let full = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock().expect("failure buckets");
        if buckets.len() >= BUCKETS_MAX {
            // Full buckets are the same as no bucket.
            let rate = self.rate();
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < full
            });
            if buckets.len() >= BUCKETS_MAX {
                buckets.clear();
            }
        }
        let tokens = buckets.get(&address).map_or(full, |b| self.tokens(b, now));
        buckets.insert(
            address,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
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
    fn failed_authentications_are_limited_per_address_and_refill() {
        let limiter = FailureLimiter::new(60);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        // Checking takes nothing: only failures count.
        for _ in 0..1000 {
            assert!(limiter.check(a, t0).is_ok());
        }
        for _ in 0..60 {
            assert!(limiter.check(a, t0).is_ok());
            limiter.fail(a, t0);
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another address has its own bucket.
        assert!(limiter.check(b, t0).is_ok());
        // One failure a second comes back.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.check(a, t1).is_ok());
        limiter.fail(a, t1);
        assert!(limiter.check(a, t1).is_err());
        // Failures while empty do not dig a deeper hole.
        for _ in 0..100 {
            limiter.fail(a, t1);
        }
        assert!(limiter.check(a, t1 + Duration::from_secs(1)).is_ok());
        // 0 turns it off.
        let off = FailureLimiter::new(0);
        off.fail(a, t0);
        assert!(off.check(a, t0).is_ok());
    }

    #[test]
    fn unknown_keys_are_remembered_for_the_negative_ttl_and_found_ones_briefly() {
        let cache = KeyCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(cache.cached("bad", t0).is_none());
        cache.remember("bad".into(), None, t0);
        assert!(matches!(
            cache.cached("bad", t0 + Duration::from_secs(29)),
            Some(None)
        ));
        assert!(cache.cached("bad", t0 + Duration::from_secs(30)).is_none());

        let caller = Caller::new("acme", "key:1".into());
        cache.remember("good".into(), Some(caller), t0);
        let hit = cache.cached("good", t0 + Duration::from_secs(4));
        assert_eq!(&*hit.unwrap().unwrap().tenant, "acme");
        // Found keys are looked up again after KEY_CACHE_TTL (revocation).
        assert!(cache.cached("good", t0 + KEY_CACHE_TTL).is_none());
        assert!(cache.recently_valid("good", t0 + Duration::from_secs(60)));
        assert!(!cache.recently_valid("good", t0 + RECENTLY_VALID));
        // A revoked key loses its pass at once.
        cache.remember("good".into(), None, t0 + Duration::from_secs(6));
        assert!(!cache.recently_valid("good", t0 + Duration::from_secs(6)));
        assert!(matches!(
            cache.cached("good", t0 + Duration::from_secs(7)),
            Some(None)
        ));

        // The unknown map is bounded, and its flood leaves found keys alone.
        let cache = KeyCache::new(Duration::from_secs(30));
        cache.remember("good".into(), Some(Caller::new("a", "k".into())), t0);
        for i in 0..KEY_CACHE_MAX + 5 {
            cache.remember(format!("bad{i}"), None, t0);
        }
        assert!(cache.unknown.lock().unwrap().len() <= KEY_CACHE_MAX);
        assert!(matches!(cache.cached("good", t0), Some(Some(_))));
        // A negative TTL of 0 remembers nothing.
        let cache = KeyCache::new(Duration::ZERO);
        cache.remember("bad".into(), None, t0);
        assert!(cache.cached("bad", t0).is_none());
    }

    #[test]
    fn the_client_address_is_the_peer_or_the_gateways_last_entry() {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let request = || {
            let mut r = Request::builder()
                .header("x-forwarded-for", "203.0.113.9, 198.51.100.4")
                .body(axum::body::Body::empty())
                .unwrap();
            r.extensions_mut().insert(ConnectInfo(peer));
            r
        };
        let auth = Auth::new(AuthMode::ApiKeys, &CallerLimits::default());
        assert_eq!(auth.client_address(&request()), Some(peer.ip()));
        let auth = auth.with_failed_auth_limits(FailedAuthLimits {
            client_address_header: Some(HeaderName::from_static("x-forwarded-for")),
            ..FailedAuthLimits::default()
        });
        assert_eq!(
            auth.client_address(&request()),
            Some("198.51.100.4".parse().unwrap())
        );
        // Without the header, or with junk in it: the peer.
        let mut bare = request();
        bare.headers_mut().remove("x-forwarded-for");
        assert_eq!(auth.client_address(&bare), Some(peer.ip()));
        let mut junk = request();
        junk.headers_mut()
            .insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(auth.client_address(&junk), Some(peer.ip()));
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
