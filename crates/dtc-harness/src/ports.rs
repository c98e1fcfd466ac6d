//! Loopback ports: never fixed, so runs can go side by side.
//!
//! A port from `bind(127.0.0.1:0)` lies in the kernel's ephemeral range,
//! which outgoing connections of every process on the machine draw from too:
//! between a kill and the restart of a process on the same port, some
//! client's connection could take it ("Address already in use"). So
//! [`free_ports`] picks from below the ephemeral range (read from /proc),
//! checks each port free, and never hands one out twice in this process;
//! it falls back to `bind(127.0.0.1:0)` where the range leaves no room.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// The lowest port [`free_ports`] picks below the ephemeral range.
const LOW: u16 = 20_000;

/// `n` distinct free loopback ports, safe to restart a process on.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if ephemeral_low < LOW + 2_000 {
        return kernel_ports(n);
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut out = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if out.len() == n {
            return Ok(out);
        }
        let port = fastrand::u16(LOW..ephemeral_low);
        if taken.contains(&port) || TcpListener::bind(loopback(port)).is_err() {
            continue;
        }
        taken.insert(port);
        out.push(port);
    }
    out.extend(kernel_ports(n - out.len())?);
    Ok(out)
}

/// Ports the kernel hands out for `127.0.0.1:0`; every listener is held
/// until all are chosen, so none comes twice.
fn kernel_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
