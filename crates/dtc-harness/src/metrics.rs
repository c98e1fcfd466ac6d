//! Reading a node's Prometheus text (`--metrics-listen`, `GET /metrics`):
//! what the demo reports about takeovers and in-doubt transactions comes
//! from here, not from log wording.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: the sample lines of a metrics page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// A page's text (for tests).
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            text: text.to_string(),
        }
    }

    /// The value of sample `name` whose labels include every `key="value"`
    /// of `labels`; None if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                let matches = metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                matches.then(|| value.parse().ok()).flatten()
            })
    }

    /// [`Metrics::get`] as a whole number (gauges and counters of counts).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.get(name, labels)
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    }
}

/// `GET http://addr/metrics`, bounded by `within`.
pub async fn scrape(addr: SocketAddr, within: Duration) -> Result<Metrics> {
    tokio::time::timeout(within, get(addr))
        .await
        .with_context(|| format!("no metrics from {addr} within {within:?}"))?
}

async fn get(addr: SocketAddr) -> Result<Metrics> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the metrics endpoint {addr}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics endpoint {addr} answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(Metrics::parse(&unchunk(body)));
    }
    Ok(Metrics::parse(body))
}

/// The body of a chunked HTTP response.
fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let m = Metrics::parse(
            "# HELP dtc_takeovers Times\n# TYPE dtc_takeovers counter\n\
             dtc_takeovers_total 2\n\
             dtc_last_takeover_transactions{kind=\"undecided\"} 3\n\
             dtc_last_takeover_transactions{kind=\"decided\"} 1\n\
             dtc_last_takeover_seconds 0.0015\n",
        );
        assert_eq!(m.count("dtc_takeovers_total", &[]), Some(2));
        assert_eq!(
            m.count("dtc_last_takeover_transactions", &[("kind", "decided")]),
            Some(1)
        );
        assert_eq!(m.get("dtc_last_takeover_seconds", &[]), Some(0.0015));
        assert_eq!(m.get("dtc_takeovers", &[]), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            unchunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
