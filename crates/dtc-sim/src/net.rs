//! dtc's network seam ([`dtc_proto::net`]) over turmoil's simulated TCP:
//! every channel dials `turmoil::net::TcpStream`, every server accepts
//! from a `turmoil::net::TcpListener`. Host names (`c1`, `bank-a`, …)
//! resolve through turmoil's DNS, so the addresses dtc stores and passes
//! around (`c1:7000`, `http://bank-a:9000`) are the ones it dials.

use dtc_proto::net::{Conn, Dialer, Incoming};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tonic::transport::{Endpoint, Uri};

/// Channels over the simulated network.
pub fn dialer() -> Dialer {
    Dialer::custom(|endpoint: Endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URI"))?
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }))
    })
}

/// Connections accepted on `port` of the current simulated host.
pub async fn incoming(host: &str, port: u16) -> io::Result<Incoming> {
    let listener =
        turmoil::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .await?;
    let local = SocketAddr::new(turmoil::lookup(host), port);
    let accepted = futures::stream::unfold(listener, move |listener| async move {
        let conn = listener
            .accept()
            .await
            .map(|(stream, remote)| Conn::new(stream, Some(local), Some(remote)));
        Some((conn, listener))
    });
    Ok(Incoming::custom(local, accepted))
}
