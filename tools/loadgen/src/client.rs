//! A keep-alive HTTP/1.1 client for the service's JSON routes.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One service, reached over pooled keep-alive connections.
#[derive(Clone)]
pub(crate) struct ServiceClient {
    base: String,
    inner: Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer` on every request: the shop's backend (`API_TOKEN`) or
    /// an admin (`ADMIN_TOKEN`).
    token: Option<String>,
}

impl ServiceClient {
    pub(crate) fn new(base: &str) -> ServiceClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        ServiceClient { base: base.trim_end_matches('/').to_owned(), inner, token: None }
    }

    /// The same service, called with the API token.
    pub(crate) fn with_token(&self, token: &str) -> ServiceClient {
        ServiceClient { token: Some(token.to_owned()), ..self.clone() }
    }

    /// POSTs a JSON body and returns the status and the parsed JSON answer.
    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = self.inner.request(request).await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: answer is not JSON"))?;
        Ok((status, json))
    }

    /// GETs `path` and parses the JSON answer, whatever the status.
    pub(crate) async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).with_context(|| format!("GET {path}: answer is not JSON"))
    }

    /// The value of an unlabelled series on `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.get_text("/metrics").await?;
        let value = text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok());
        value.with_context(|| format!("no {name} on /metrics"))
    }

    /// GETs `path` and returns the answer's text, whatever the status.
    pub(crate) async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let mut request = Request::builder().uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new()))?;
        let response = self.inner.request(request).await.with_context(|| format!("GET {path}"))?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `POST /api/coupons/validate`, which must answer 200.
    pub(crate) async fn validate(&self, body: &Value) -> anyhow::Result<Value> {
        let (status, json) = self.post_json("/api/coupons/validate", body).await?;
        if status != StatusCode::OK {
            bail!("validate answered {status}: {json}");
        }
        Ok(json)
    }
}
