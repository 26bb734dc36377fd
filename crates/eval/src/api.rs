//! The service's public API as the harness uses it (`run` and `export`):
//! one HTTP client, the bearer key sent to the service's own paths only.

use std::time::Duration;

use anyhow::{bail, Context};

/// A client of one service.
pub(crate) struct ServiceApi {
    base: String,
    http: reqwest::Client,
    key: Option<String>,
}

impl ServiceApi {
    /// A client of the service at `base`, with its API key if it wants one.
    pub(crate) fn new(base: &str, key: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            key: key.map(str::to_string),
        })
    }

    /// A request to `path` of the service, carrying the key.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// `GET`s a path of the service, or an absolute URL (a case's image,
    /// on any host: it is sent no key); fails on a status other than 2xx.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let absolute = path.starts_with("http://") || path.starts_with("https://");
        let request = if absolute {
            self.http.get(path)
        } else {
            self.request(reqwest::Method::GET, path)
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        bail!("GET {path}: {status} {}", body.trim())
    }

    /// The body of [`Self::get`].
    pub(crate) async fn bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.get(path).await?.bytes().await?.to_vec())
    }
}
