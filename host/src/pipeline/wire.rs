//! One blocking connection to one Kafka broker, speaking the wire protocol
//! through the `kafka-protocol` codecs: for the requests librdkafka does not
//! let us shape (the fenced producer's `InitProducerId` and produce
//! requests carrying the unit's producer id and epoch).
//!
//! Guarantees: requests on a connection are answered in order, one at a
//! time (`request` writes one and reads its answer); every read and write
//! is bounded by [`IO_TIMEOUT`]; a response whose correlation id or length
//! is wrong is an error, and the connection is not used again after any
//! I/O or framing error (the caller drops it and reconnects). API versions
//! are negotiated once per connection (`ApiVersions` v0): each request goes
//! out at the highest version both sides support, and a broker that
//! supports none of ours is one clear error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Bound on connecting and on each read or write of a request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted, in bytes: produce, metadata and list-offsets
/// answers are small; anything larger is a framing error.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A connection to one broker.
pub struct WireConnection {
    address: String,
    stream: TcpStream,
    client_id: StrBytes,
    next_correlation: i32,
    /// API key → the versions the broker supports.
    broker_versions: HashMap<i16, RangeInclusive<i16>>,
}

impl WireConnection {
    /// Connect to `address` (`host:port`) and negotiate API versions.
    pub fn connect(address: &str, client_id: &str) -> Result<Self> {
        WireConnection::connect_within(address, client_id, IO_TIMEOUT)
    }

    /// [`connect`](Self::connect) with `timeout` on the connect and on each
    /// read and write of the version negotiation (and of later requests).
    pub fn connect_within(address: &str, client_id: &str, timeout: Duration) -> Result<Self> {
        let target = address
            .to_socket_addrs()
            .with_context(|| format!("resolving the broker address {address}"))?
            .next()
            .ok_or_else(|| anyhow!("the broker address {address} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&target, timeout)
            .with_context(|| format!("connecting to the broker at {address}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // Requests are written whole and waited for: no point in Nagle.
        stream.set_nodelay(true)?;
        let mut connection = WireConnection {
            address: address.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation: 0,
            broker_versions: HashMap::new(),
        };
        // Version 0 of ApiVersions is answered by every broker.
        let versions = connection.request_at(&ApiVersionsRequest::default(), 0)?;
        if versions.error_code != 0 {
            bail!(
                "the broker at {address} refused ApiVersions (error code {})",
                versions.error_code
            );
        }
        connection.broker_versions = versions
            .api_keys
            .iter()
            .map(|v| (v.api_key, v.min_version..=v.max_version))
            .collect();
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The highest version of `R` in `ours` the broker supports.
    pub fn version_of<R: Request>(&self, ours: RangeInclusive<i16>) -> Result<i16> {
        let name = api_name(R::KEY);
        let theirs = self.broker_versions.get(&R::KEY).ok_or_else(|| {
            anyhow!(
                "the broker at {} does not support {name} requests",
                self.address
            )
        })?;
        let highest = (*ours.end()).min(*theirs.end());
        if highest < *ours.start() || highest < *theirs.start() {
            bail!(
                "the broker at {} supports {name} versions {theirs:?}, LogStream needs one of {ours:?}",
                self.address
            );
        }
        Ok(highest)
    }

    /// Send `request` at the highest version in `ours` both sides support
    /// and wait for its response.
    pub fn request<R: Request>(
        &mut self,
        request: &R,
        ours: RangeInclusive<i16>,
    ) -> Result<R::Response> {
        let version = self.version_of::<R>(ours)?;
        self.request_at(request, version)
    }

    /// Send `request` at `version` (from [`version_of`](Self::version_of))
    /// and wait for its response: for requests whose fields depend on it.
    pub fn request_at<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(self.client_id.clone());

        let mut frame = BytesMut::new();
        // The length prefix, filled in once the size is known.
        frame.extend_from_slice(&[0; 4]);
        header.encode(&mut frame, R::header_version(version))?;
        request.encode(&mut frame, version)?;
        let length = u32::try_from(frame.len() - 4).context("a request over 4 GiB")?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let name = api_name(R::KEY);
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending a {name} request to {}", self.address))?;

        let mut length = [0u8; 4];
        self.stream
            .read_exact(&mut length)
            .with_context(|| format!("reading the {name} response from {}", self.address))?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_RESPONSE_BYTES {
            bail!(
                "the {name} response from {} claims {length} bytes (limit {MAX_RESPONSE_BYTES})",
                self.address
            );
        }
        let mut body = vec![0u8; length];
        self.stream
            .read_exact(&mut body)
            .with_context(|| format!("reading the {name} response from {}", self.address))?;
        let mut body = Bytes::from(body);
        let response_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version))
                .with_context(|| format!("decoding the {name} response header"))?;
        if response_header.correlation_id != correlation {
            bail!(
                "the broker at {} answered request {correlation} with {}",
                self.address,
                response_header.correlation_id
            );
        }
        R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding the {name} response from {}", self.address))
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("API {key}"))
}

/// Idle connections a [`WirePool`] keeps per broker address; more are
/// closed when given back (a mass takeover may open more for a moment).
pub const IDLE_CONNECTIONS_PER_BROKER: usize = 16;

/// Connections to the brokers shared by every fenced producer of a host:
/// a producer checks one out for a request and gives it back, so a host
/// holds a few connections per broker instead of one or two per unit. A
/// connection is used by one request at a time (requests stay answered in
/// order), and one that failed is never given back.
#[derive(Debug)]
pub struct WirePool {
    client_id: String,
    idle: std::sync::Mutex<HashMap<String, Vec<WireConnection>>>,
}

impl std::fmt::Debug for WireConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireConnection")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl WirePool {
    /// An empty pool whose connections introduce themselves as `client_id`.
    pub fn new(client_id: &str) -> Self {
        WirePool {
            client_id: client_id.to_string(),
            idle: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<WireConnection>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `address`, or a new one.
    pub fn checkout(&self, address: &str) -> Result<WireConnection> {
        if let Some(connection) = self.idle().get_mut(address).and_then(Vec::pop) {
            return Ok(connection);
        }
        WireConnection::connect(address, &self.client_id)
    }

    /// Give back a connection whose last request succeeded.
    pub fn give_back(&self, connection: WireConnection) {
        let mut idle = self.idle();
        let kept = idle.entry(connection.address.clone()).or_default();
        if kept.len() < IDLE_CONNECTIONS_PER_BROKER {
            kept.push(connection);
        }
    }
}
