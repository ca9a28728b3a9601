//! One HTTP/1.1 keep-alive connection per load worker, reconnecting after an error.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The shop's backend token (`--api-token`, `API_TOKEN`), sent with every request when set:
/// redeem, hold and release need it on a service that has one.
pub(crate) static API_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A worker's connection to the service.
pub(crate) struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Conn {
        Conn { addr, host: addr.to_string(), sender: None }
    }

    /// POSTs `body` to `path`; returns the status and the body.
    pub(crate) async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(connect(self.addr).await?),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(token) = API_TOKEN.get() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body))?;
        let result = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
