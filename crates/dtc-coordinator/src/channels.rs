//! A bounded cache of lazily connecting gRPC channels, keyed by address.
//!
//! Keyed by *address*, not by participant or node name: when a participant
//! re-registers on a new endpoint, the next lookup of its name yields the new
//! address and so a new channel (corner case 15). Every endpoint a
//! participant ever registered would otherwise keep a channel (and its
//! connection) for the life of the process, so the cache holds at most
//! [`MAX_CHANNELS`] and evicts the least recently used past that. Eviction
//! only drops the cache's handle: a call holding a clone keeps its channel,
//! and the next lookup of an evicted address connects afresh.

use dtc_proto::net::Dialer;
use dtc_proto::tls::Tls;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Most channels cached at once. Far above what a deployment dials (its
/// peers plus its participants' current endpoints), so only stale endpoints
/// and abuse are ever evicted.
pub const MAX_CHANNELS: usize = 1024;

#[derive(Clone)]
pub struct Channels {
    inner: Arc<Mutex<Cache>>,
    /// Every channel is TLS with this node's certificate when set.
    tls: Option<Tls>,
    /// TCP, or the simulation's network.
    dialer: Dialer,
}

impl Default for Channels {
    fn default() -> Self {
        Channels::new(None)
    }
}

/// Channels by address, each with the tick of its last use.
struct Cache {
    map: HashMap<String, (Channel, u64)>,
    tick: u64,
    capacity: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint {addr:?}: {source}")]
pub struct BadEndpoint {
    addr: String,
    source: tonic::transport::Error,
}

impl Channels {
    pub fn new(tls: Option<Tls>) -> Channels {
        Channels::with_capacity(tls, MAX_CHANNELS)
    }

    /// A cache of at most `capacity` channels (at least one).
    pub fn with_capacity(tls: Option<Tls>, capacity: usize) -> Channels {
        Channels {
            inner: Arc::new(Mutex::new(Cache {
                map: HashMap::new(),
                tick: 0,
                capacity: capacity.max(1),
            })),
            tls,
            dialer: Dialer::tcp(),
        }
    }

    /// The same cache, connecting through `dialer` instead of TCP.
    pub fn with_dialer(mut self, dialer: Dialer) -> Channels {
        self.dialer = dialer;
        self
    }

    /// How many channels the cache holds now (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, addr: &str) -> Result<Channel, BadEndpoint> {
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((ch, used)) = cache.map.get_mut(addr) {
            *used = tick;
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
        let ch = self.dialer.connect_lazy(endpoint);
        if cache.map.len() >= cache.capacity {
            // A linear scan, only when a new address arrives at a full
            // cache: cheaper than keeping an order on every hit.
            let oldest = cache
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| a.clone());
            if let Some(oldest) = oldest {
                cache.map.remove(&oldest);
            }
        }
        cache.map.insert(addr.to_string(), (ch.clone(), tick));
        Ok(ch)
    }

    /// Whether `addr` has a cached channel (tests).
    #[cfg(test)]
    fn contains(&self, addr: &str) -> bool {
        self.lock().map.contains_key(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_evicts_the_least_recently_used_address_past_its_bound() {
        let channels = Channels::with_capacity(None, 3);
        for port in 1..=3 {
            channels.get(&format!("127.0.0.1:{port}")).unwrap();
        }
        // Port 1 is used again: port 2 is now the least recently used.
        channels.get("127.0.0.1:1").unwrap();
        for port in 4..=50 {
            channels.get(&format!("127.0.0.1:{port}")).unwrap();
            assert!(channels.len() <= 3, "{} channels cached", channels.len());
            // A peer dialed all the time is never the one evicted.
            channels.get("127.0.0.1:1").unwrap();
        }
        assert_eq!(channels.len(), 3);
        assert!(channels.contains("127.0.0.1:1"));
        assert!(!channels.contains("127.0.0.1:2"));
        assert!(channels.contains("127.0.0.1:50"));
    }

    /// Corner case 15 with eviction: a participant that moved to a new
    /// endpoint is dialed there, and an evicted address, looked up again,
    /// gets a fresh channel that really connects.
    #[tokio::test]
    async fn an_evicted_address_gets_a_working_channel_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let (_reporter, health) = tonic_health::server::health_reporter();
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        });
        let channels = Channels::with_capacity(None, 2);
        channels.get(&addr).unwrap();
        channels.get("127.0.0.1:1").unwrap();
        channels.get("127.0.0.1:2").unwrap();
        assert!(!channels.contains(&addr), "the first address was evicted");
        let ch = channels.get(&addr).unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.check(tonic_health::pb::HealthCheckRequest::default()),
        )
        .await
        .expect("the health check answered in time")
        .expect("a served health check");
        assert_eq!(
            r.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        server.abort();
    }
}
