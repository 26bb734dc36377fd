//! The command-line client: `editthinker submit` and `editthinker jobs …`
//! talk to a running service over its HTTP API, like any other client.

pub mod commands;
pub mod sse;
pub mod watch;

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the service is, unless `--server` or `EDITTHINKER_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached or the connection broke.
    #[error("cannot reach {server}: {source}")]
    Connection {
        /// The base URL.
        server: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The service answered with a problem.
    #[error("{status}: {code}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's `code`.
        code: String,
        /// The problem's `detail`.
        detail: String,
    },
    /// The event stream could not be kept open.
    #[error("{0}")]
    Stream(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    File(String),
}

impl ClientError {
    /// A connection failure (worth retrying), not an answer.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Connection { .. })
    }
}

/// The service's API, with an optional bearer key.
pub struct ApiClient {
    server: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of `server` (a base URL) acting with `key`.
    pub fn new(server: &str, key: Option<String>) -> Self {
        Self {
            server: server.trim_end_matches('/').to_string(),
            key: key.filter(|k| !k.is_empty()),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.server));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    fn connection(&self, source: reqwest::Error) -> ClientError {
        ClientError::Connection {
            server: self.server.clone(),
            source,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.connection(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        Err(ClientError::Problem {
            status,
            code: problem["code"].as_str().unwrap_or("http_error").to_string(),
            detail: problem["detail"]
                .as_str()
                .unwrap_or("the service gave no detail")
                .to_string(),
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| self.connection(e))
    }

    /// `POST /v1/jobs` as multipart: the image file and the fields.
    pub async fn submit(
        &self,
        image: &Path,
        instruction: &str,
        editor: Option<&str>,
        options: &Value,
    ) -> Result<Value, ClientError> {
        let bytes = tokio::fs::read(image)
            .await
            .map_err(|e| ClientError::File(format!("reading {}: {e}", image.display())))?;
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mut form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            )
            .text("instruction", instruction.to_string())
            .text("options", options.to_string());
        if let Some(editor) = editor {
            form = form.text("editor", editor.to_string());
        }
        self.json(self.request(Method::POST, "/v1/jobs").multipart(form))
            .await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{id}")))
            .await
    }

    /// `GET /v1/jobs` with optional status and page size.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Value, ClientError> {
        let mut query = Vec::new();
        if let Some(status) = status {
            query.push(("status", status.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.json(self.request(Method::GET, "/v1/jobs").query(&query))
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/jobs/{id}/cancel")))
            .await
    }

    /// `POST /v1/jobs/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/jobs/{id}/retry")))
            .await
    }

    /// The bytes at `path` (an image route).
    pub async fn bytes(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        response.bytes().await.map_err(|e| self.connection(e))
    }

    /// Opens the job's event stream after `last_id`; `None` when the server
    /// answers 204 (the job is over and nothing follows).
    pub async fn events(
        &self,
        id: &str,
        last_id: Option<i64>,
    ) -> Result<Option<reqwest::Response>, ClientError> {
        let mut request = self
            .request(Method::GET, &format!("/v1/jobs/{id}/events"))
            .header("accept", "text/event-stream");
        if let Some(last) = last_id {
            request = request.header("last-event-id", last.to_string());
        }
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(response))
    }
}
