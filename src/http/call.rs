//! A request as a handler gets it: what the route table parsed and checked before the call.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use hyper::HeaderMap;

/// A request as a handler gets it.
#[derive(Debug)]
pub struct Call {
    /// The path's `{…}` segments, percent-decoded, in order.
    pub params: Vec<String>,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: IpAddr,
    /// The caller presented the API token (or none is configured): a trusted backend.
    pub backend: bool,
    pub started: Instant,
}
