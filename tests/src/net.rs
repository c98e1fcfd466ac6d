//! Network faults between processes on one machine: a TCP proxy per
//! directed link that the harness switches between up, refusing and
//! black-holing.
//!
//! A process reaches a peer through the proxy of the link (from → to): a
//! coordinator through `--peer-addr-override`, a coordinator → participant
//! call through the endpoint the participant registered (`--advertise`), a
//! participant → coordinator call through its `--coordinators` list. Every
//! RPC in dtc travels on a connection that the *caller* opens, so cutting
//! the link (A → B) stops A's calls to B and their replies, while B's calls
//! to A (on B's own link) still go through: a one-way cut as an RPC system
//! sees it.
//!
//! Modes ([`LinkMode`]):
//! - `Up`: bytes are copied both ways.
//! - `Refuse`: new connections are accepted and reset at once, and open
//!   ones are reset: the caller fails fast (like a crashed host that
//!   answers with RST, or a firewall REJECT rule).
//! - `Blackhole`: new connections are accepted and never answered, open ones
//!   stop moving bytes: the caller hangs until its own timeouts and
//!   keep-alives give up (like dropped packets, a firewall DROP rule). On
//!   heal, the held connections are closed and callers reconnect.
//!
//! On an `Up` link, [`Weather`] degrades the traffic without cutting it:
//! every chunk of bytes is held for a latency plus a random jitter, and
//! with some probability for a retransmission timeout more, as a lost
//! segment would be. Within one connection TCP keeps the order (so does
//! the proxy); across connections the independent delays reorder what two
//! callers sent, which is the reordering an RPC system can see.
//!
//! Why proxies and not network namespaces: see docs/testing.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a [`Link`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    Up,
    Refuse,
    Blackhole,
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkMode::Up => "up",
            LinkMode::Refuse => "refuse",
            LinkMode::Blackhole => "blackhole",
        })
    }
}

/// How an `Up` link delays traffic (all zero: not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Weather {
    /// Added to every chunk.
    pub latency_ms: u64,
    /// Up to this much more, uniformly, per chunk.
    pub jitter_ms: u64,
    /// Percentage of chunks held for a retransmission timeout (200 ms)
    /// more, as a lost segment is.
    pub loss_percent: u8,
}

impl Weather {
    pub const CALM: Weather = Weather {
        latency_ms: 0,
        jitter_ms: 0,
        loss_percent: 0,
    };

    fn is_calm(&self) -> bool {
        self.latency_ms == 0 && self.jitter_ms == 0 && self.loss_percent == 0
    }

    /// How long to hold the next chunk.
    fn delay(&self, rng: &mut fastrand::Rng) -> Duration {
        let mut ms = self.latency_ms + rng.u64(0..=self.jitter_ms);
        if rng.u8(0..100) < self.loss_percent {
            ms += 200;
        }
        Duration::from_millis(ms)
    }
}

impl fmt::Display for Weather {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency {} ms + jitter up to {} ms, {} % of chunks held 200 ms more",
            self.latency_ms, self.jitter_ms, self.loss_percent
        )
    }
}

/// A proxy for one directed link, listening on a loopback port. Stops when
/// dropped (its held connections close).
pub struct Link {
    name: String,
    listen: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    weather: watch::Sender<Weather>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("target", &self.target)
            .field("mode", &*self.mode.borrow())
            .finish()
    }
}

impl Link {
    /// Starts a proxy on a fresh loopback port forwarding to `target`. Must
    /// be called inside a tokio runtime.
    pub fn start(name: impl Into<String>, target: SocketAddr) -> Arc<Link> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port on 127.0.0.1");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let listen = std_listener.local_addr().expect("proxy local_addr");
        let listener = TcpListener::from_std(std_listener).expect("tokio proxy listener");
        let (mode, _) = watch::channel(LinkMode::Up);
        let (weather, _) = watch::channel(Weather::CALM);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            mode.subscribe(),
            weather.subscribe(),
            accepted.clone(),
        ));
        Arc::new(Link {
            name: name.into(),
            listen,
            target,
            mode,
            weather,
            accepted,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address callers dial.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Degrades (or, with [`Weather::CALM`], restores) the traffic of open
    /// and new connections while the link is up.
    pub fn set_weather(&self, weather: Weather) {
        self.weather.send_replace(weather);
    }

    pub fn weather(&self) -> Weather {
        *self.weather.borrow()
    }

    /// Connections accepted so far (to check that traffic really goes
    /// through the proxy).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(s: &TcpStream) {
    // SO_LINGER 0: close with RST, so the peer fails at once.
    let _ = s.set_zero_linger();
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<LinkMode>,
    weather: watch::Receiver<Weather>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let _ = inbound.set_nodelay(true);
        let now = *mode.borrow();
        match now {
            LinkMode::Refuse => reset(&inbound),
            LinkMode::Blackhole => {
                tokio::spawn(hold(inbound, None, mode.clone()));
            }
            LinkMode::Up => {
                tokio::spawn(pipe(inbound, target, mode.clone(), weather.clone()));
            }
        }
    }
}

/// Keeps the connection open without moving a byte until the link is up
/// again (or the proxy stops), then closes it.
async fn hold(
    inbound: TcpStream,
    outbound: Option<TcpStream>,
    mut mode: watch::Receiver<LinkMode>,
) {
    let _ = mode.wait_for(|m| *m != LinkMode::Blackhole).await;
    reset(&inbound);
    if let Some(o) = &outbound {
        reset(o);
    }
}

async fn pipe(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
    weather: watch::Receiver<Weather>,
) {
    let outbound =
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            _ => {
                // The target is down: the caller sees what it would see
                // connecting directly, a reset.
                reset(&inbound);
                return;
            }
        };
    let _ = outbound.set_nodelay(true);
    let mut outbound = outbound;
    let changed = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let forward = pump(in_read, out_write, weather.clone());
        let backward = pump(out_read, in_write, weather);
        tokio::select! {
            _ = futures::future::join(forward, backward) => None,
            m = mode.wait_for(|m| *m != LinkMode::Up) => m.ok().map(|m| *m),
        }
    };
    match changed {
        Some(LinkMode::Blackhole) => hold(inbound, Some(outbound), mode).await,
        Some(_) => {
            reset(&inbound);
            reset(&outbound);
        }
        None => {}
    }
}

/// Copies one direction of a connection, holding each chunk as the
/// link's current weather says (in order: a chunk waits for the one before).
/// Ends when either side closes; then shuts the write side down so the
/// other direction's peer sees the end too.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    weather: watch::Receiver<Weather>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rng = fastrand::Rng::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let w = *weather.borrow();
        if !w.is_calm() {
            tokio::time::sleep(w.delay(&mut rng)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The links between coordinator nodes: one [`Link`] per ordered pair.
pub struct Mesh {
    links: BTreeMap<(u64, u64), Arc<Link>>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Mesh {
    /// A proxy for every ordered pair of `nodes` (id → member address).
    pub fn start(nodes: &BTreeMap<u64, SocketAddr>) -> Mesh {
        let mut links = BTreeMap::new();
        for &from in nodes.keys() {
            for (&to, &addr) in nodes {
                if from != to {
                    links.insert((from, to), Link::start(format!("c{from}->c{to}"), addr));
                }
            }
        }
        Mesh { links }
    }

    pub fn link(&self, from: u64, to: u64) -> &Arc<Link> {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link {from} -> {to}"))
    }

    /// Every link, keyed by (from, to).
    pub fn links(&self) -> &BTreeMap<(u64, u64), Arc<Link>> {
        &self.links
    }

    /// `--peer-addr-override` values for node `from`: `to=proxy` for every peer.
    pub fn overrides_for(&self, from: u64) -> Vec<String> {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|((_, to), l)| format!("{to}={}", l.addr()))
            .collect()
    }

    /// One-way: `from`'s calls to `to` fail (`to` can still call `from`).
    pub fn cut(&self, from: u64, to: u64, mode: LinkMode) {
        self.link(from, to).set(mode);
    }

    /// Both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[u64], b: &[u64], mode: LinkMode) {
        for &x in a {
            for &y in b {
                self.link(x, y).set(mode);
                self.link(y, x).set(mode);
            }
        }
    }

    /// `id` can neither call nor be called by any other node.
    pub fn isolate(&self, id: u64, mode: LinkMode) {
        let others: Vec<u64> = self
            .links
            .keys()
            .map(|(f, _)| *f)
            .filter(|f| *f != id)
            .collect();
        self.partition(&[id], &others, mode);
    }

    /// Every link up, in calm weather.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.set(LinkMode::Up);
            l.set_weather(Weather::CALM);
        }
    }

    /// The same weather on every link.
    pub fn set_weather(&self, weather: Weather) {
        for l in self.links.values() {
            l.set_weather(weather);
        }
    }

    /// Links not up, or up in bad weather, as `name=mode`.
    pub fn faults(&self) -> Vec<String> {
        self.links
            .values()
            .filter(|l| l.mode() != LinkMode::Up || !l.weather().is_calm())
            .map(|l| match l.mode() {
                LinkMode::Up => format!("{}=degraded ({})", l.name(), l.weather()),
                m => format!("{}={m}", l.name()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on a loopback port.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(link: &Link) -> Duration {
        let mut s = TcpStream::connect(link.addr()).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping", "the bytes arrive unchanged");
        started.elapsed()
    }

    #[tokio::test]
    async fn weather_delays_each_direction_and_calm_restores_it() {
        let link = Link::start("test", echo().await);
        link.set_weather(Weather {
            latency_ms: 150,
            jitter_ms: 0,
            loss_percent: 0,
        });
        // Both directions are held: at least twice the latency.
        let slow = round_trip(&link).await;
        assert!(slow >= Duration::from_millis(300), "{slow:?}");
        // Every chunk is "lost" once: 200 ms more each way.
        link.set_weather(Weather {
            latency_ms: 0,
            jitter_ms: 0,
            loss_percent: 100,
        });
        let lossy = round_trip(&link).await;
        assert!(lossy >= Duration::from_millis(400), "{lossy:?}");
        link.set_weather(Weather::CALM);
        let calm = round_trip(&link).await;
        assert!(calm < slow, "calm {calm:?} vs slow {slow:?}");
    }
}
