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

/// A proxy for one directed link, listening on a loopback port. Stops when
/// dropped (its held connections close).
pub struct Link {
    name: String,
    listen: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
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
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            mode.subscribe(),
            accepted.clone(),
        ));
        Arc::new(Link {
            name: name.into(),
            listen,
            target,
            mode,
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
                tokio::spawn(pipe(inbound, target, mode.clone()));
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

async fn pipe(mut inbound: TcpStream, target: SocketAddr, mut mode: watch::Receiver<LinkMode>) {
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
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => None,
        m = mode.wait_for(|m| *m != LinkMode::Up) => m.ok().map(|m| *m),
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

    /// Every link up.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.set(LinkMode::Up);
        }
    }

    /// Links not up, as `name=mode`.
    pub fn faults(&self) -> Vec<String> {
        self.links
            .values()
            .filter(|l| l.mode() != LinkMode::Up)
            .map(|l| format!("{}={}", l.name(), l.mode()))
            .collect()
    }
}
