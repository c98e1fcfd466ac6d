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
//!
//! A connection can also die silently: a middlebox forgets the flow, or a
//! one-way cut swallows what it carries, and nothing closes the socket.
//! Calls on it then only time out, and the channel would notice by its
//! HTTP/2 keepalive alone (up to its interval plus its timeout, 10 s).
//! [`Channels::dial`] hands out a [`Lease`] with the channel, and a caller
//! whose call got no answer in its time ([`is_silent`]) gives it back with
//! [`Channels::forget`]: the next call dials a fresh connection. The lease
//! names the channel's generation, so the many calls that time out on one
//! dead connection replace it once, not once each.

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

/// Channels by address, each with the tick of its last use and its
/// generation (the tick it was created at, unique per cache).
struct Cache {
    map: HashMap<String, Cached>,
    tick: u64,
    capacity: usize,
}

struct Cached {
    channel: Channel,
    used: u64,
    generation: u64,
}

/// Which cached channel a call used: given back to [`Channels::forget`]
/// when the call suggests the connection is dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    addr: String,
    generation: u64,
}

impl Lease {
    /// The address the leased channel dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Whether `status` says the peer did not answer at all within the call's
/// timeout: tonic's own client-side timer fired (CANCELLED with
/// [`tonic::TimeoutExpired`] as its source), as opposed to an answer, even
/// DEADLINE_EXCEEDED from the peer, which proves the connection carries.
pub fn is_silent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Cancelled {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
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
        self.dial(addr).map(|(channel, _)| channel)
    }

    /// The channel to `addr` and its [`Lease`], for a caller that gives the
    /// channel back ([`Channels::forget`]) when a call gets no answer.
    pub fn dial(&self, addr: &str) -> Result<(Channel, Lease), BadEndpoint> {
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if let Some(cached) = cache.map.get_mut(addr) {
            cached.used = tick;
            let lease = Lease {
                addr: addr.to_string(),
                generation: cached.generation,
            };
            return Ok((cached.channel.clone(), lease));
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
                .min_by_key(|(_, cached)| cached.used)
                .map(|(a, _)| a.clone());
            if let Some(oldest) = oldest {
                cache.map.remove(&oldest);
            }
        }
        cache.map.insert(
            addr.to_string(),
            Cached {
                channel: ch.clone(),
                used: tick,
                generation: tick,
            },
        );
        let lease = Lease {
            addr: addr.to_string(),
            generation: tick,
        };
        Ok((ch, lease))
    }

    /// Drops the cached channel `lease` names, if it is still the cached
    /// one, so that the next [`Channels::dial`] of its address connects
    /// afresh. Returns whether it dropped it. Calls still holding the old
    /// channel keep it until they end.
    pub fn forget(&self, lease: &Lease) -> bool {
        let mut cache = self.lock();
        let current = cache
            .map
            .get(&lease.addr)
            .is_some_and(|cached| cached.generation == lease.generation);
        if current {
            cache.map.remove(&lease.addr);
        }
        current
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

    /// A peer that takes connections and never answers (a flow a middlebox
    /// forgot looks the same from this side): the call ends by the client's
    /// own timer, that is what [`is_silent`] recognises, and after
    /// [`Channels::forget`] the next call really opens a new connection.
    /// A stale lease (the channel was already replaced) replaces nothing.
    #[tokio::test]
    async fn a_call_that_hears_nothing_gives_its_connection_up_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (held, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Kept open, never read from or written to.
                if held.send(socket).is_err() {
                    return;
                }
            }
        });
        let call = |channel: Channel| async move {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
            req.set_timeout(Duration::from_millis(200));
            client.check(req).await.expect_err("nobody answers")
        };
        let channels = Channels::new(None);
        let (channel, lease) = channels.dial(&addr).unwrap();
        let status = call(channel).await;
        assert!(is_silent(&status), "{status:?}");
        assert!(next_connection(&mut accepted).await);

        // Every caller of the dead channel holds a lease naming it; the
        // first to give it up replaces it, the others change nothing.
        let (_, again) = channels.dial(&addr).unwrap();
        assert_eq!(again, lease);
        assert!(channels.forget(&lease));
        assert!(
            !channels.forget(&again),
            "one dead connection is replaced once"
        );

        let (channel, fresh) = channels.dial(&addr).unwrap();
        assert_ne!(fresh, lease);
        assert!(is_silent(&call(channel).await));
        assert!(
            next_connection(&mut accepted).await,
            "the call after forget dialed a new connection"
        );
        assert!(channels.contains(&addr));
        server.abort();
    }

    /// Whether the silent peer took one more connection within 10 s.
    async fn next_connection(
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<tokio::net::TcpStream>,
    ) -> bool {
        tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .ok()
            .flatten()
            .is_some()
    }

    #[test]
    fn answers_and_other_failures_are_not_silence() {
        // DEADLINE_EXCEEDED comes from the peer: the connection carries.
        assert!(!is_silent(&tonic::Status::deadline_exceeded("too slow")));
        assert!(!is_silent(&tonic::Status::unavailable(
            "connection refused"
        )));
        // CANCELLED for any other reason than the client's own timer.
        assert!(!is_silent(&tonic::Status::cancelled("Timeout expired")));
        let mut timed_out = tonic::Status::cancelled("Timeout expired");
        timed_out.set_source(std::sync::Arc::new(tonic::TimeoutExpired(())));
        assert!(is_silent(&timed_out));
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
