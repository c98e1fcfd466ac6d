//! A cache of lazily connecting gRPC channels, keyed by address.
//!
//! Keyed by *address*, not by participant or node name: when a participant
//! re-registers on a new endpoint, the next lookup of its name yields the new
//! address and so a new channel (corner case 15).

use dtc_proto::tls::Tls;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    /// Every channel is TLS with this node's certificate when set.
    tls: Option<Tls>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint {addr:?}: {source}")]
pub struct BadEndpoint {
    addr: String,
    source: tonic::transport::Error,
}

impl Channels {
    pub fn new(tls: Option<Tls>) -> Channels {
        Channels {
            inner: Arc::default(),
            tls,
        }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, BadEndpoint> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = dtc_proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|source| BadEndpoint {
                addr: addr.to_string(),
                source,
            })?
            // A dead peer must fail fast so retries and elections move on.
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = endpoint.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}
