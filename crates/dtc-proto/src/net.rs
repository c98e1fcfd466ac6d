//! How a dtc process opens connections and accepts them.
//!
//! Every server (coordinator, participant) and every channel (Raft,
//! forwarding, participant calls, registration, the client SDK) goes through
//! these two types, so that the network underneath can be swapped as a
//! whole: real TCP by default, or the simulated network of the
//! deterministic whole-cluster simulation (`crates/dtc-sim`), where every
//! node of a cluster runs in one process on simulated hosts.
//!
//! - [`Dialer`] turns a configured [`Endpoint`] into a lazily connecting
//!   [`Channel`]: `Endpoint::connect_lazy` (TCP) unless a custom connector
//!   was injected.
//! - [`Incoming`] is the stream of accepted connections a tonic server
//!   serves: a TCP listener (with `TCP_NODELAY`) or an injected stream.

use futures::stream::{BoxStream, StreamExt};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint};

type DialFn = dyn Fn(Endpoint) -> Channel + Send + Sync;

/// Makes channels from endpoints: over TCP unless built with
/// [`Dialer::custom`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Dialer {
    custom: Option<Arc<DialFn>>,
}

impl Dialer {
    /// Real TCP (`Endpoint::connect_lazy`).
    pub fn tcp() -> Dialer {
        Dialer::default()
    }

    /// Channels made by `dial`, typically
    /// `endpoint.connect_with_connector_lazy(…)` over another transport.
    pub fn custom(dial: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Dialer {
        Dialer {
            custom: Some(Arc::new(dial)),
        }
    }

    /// A channel to `endpoint` that connects on first use (and reconnects
    /// after a failure), with every setting of the endpoint kept.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        match &self.custom {
            None => endpoint.connect_lazy(),
            Some(dial) => dial(endpoint),
        }
    }

    /// Whether this dials real TCP.
    pub fn is_tcp(&self) -> bool {
        self.custom.is_none()
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_tcp() {
            "Dialer(tcp)"
        } else {
            "Dialer(custom)"
        })
    }
}

/// A byte stream a server accepted.
trait Io: AsyncRead + AsyncWrite + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + 'static> Io for T {}

/// One accepted connection, whatever carries it. Its connect info is a
/// [`TcpConnectInfo`], so `Request::remote_addr` works on every transport.
pub struct Conn {
    io: Pin<Box<dyn Io>>,
    info: TcpConnectInfo,
}

impl Conn {
    pub fn new(
        io: impl AsyncRead + AsyncWrite + Send + 'static,
        local_addr: Option<SocketAddr>,
        remote_addr: Option<SocketAddr>,
    ) -> Conn {
        Conn {
            io: Box::pin(io),
            info: TcpConnectInfo {
                local_addr,
                remote_addr,
            },
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("local_addr", &self.info.local_addr)
            .field("remote_addr", &self.info.remote_addr)
            .finish()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}

/// The connections a server accepts, and the address it accepts them on.
pub struct Incoming {
    local_addr: SocketAddr,
    stream: BoxStream<'static, io::Result<Conn>>,
}

impl Incoming {
    /// Connections accepted by `listener`, each with `TCP_NODELAY` set
    /// (`Server::tcp_nodelay` does not reach sockets accepted from our own
    /// listener; without it, concurrent calls on one connection wait ~40 ms
    /// each for Nagle's algorithm).
    pub fn tcp(listener: tokio::net::TcpListener) -> io::Result<Incoming> {
        let local_addr = listener.local_addr()?;
        let stream = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|accepted| {
                let stream = accepted?;
                let local = stream.local_addr().ok();
                let remote = stream.peer_addr().ok();
                Ok(Conn::new(stream, local, remote))
            })
            .boxed();
        Ok(Incoming { local_addr, stream })
    }

    /// Connections from another transport, accepted on `local_addr`.
    pub fn custom(
        local_addr: SocketAddr,
        stream: impl futures::Stream<Item = io::Result<Conn>> + Send + 'static,
    ) -> Incoming {
        Incoming {
            local_addr,
            stream: stream.boxed(),
        }
    }

    /// The address connections are accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The stream to hand to `Server::serve_with_incoming*`.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Conn>> {
        self.stream
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
