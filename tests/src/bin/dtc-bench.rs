//! # dtc-bench: performance and recovery-time measurements of a dtc cluster
//!
//! ```sh
//! cargo build --release -p dtc-cli
//! DTC_BIN=target/release/dtc cargo run --release -p dtc-tests --bin dtc-bench -- <scenario> [flags]
//! ```
//!
//! Every scenario starts its own processes on loopback ports in a temporary
//! directory (the harness in `dtc_tests`), measures the floors (disk sync,
//! loopback TCP and gRPC round trips) in the same run, prints a short table
//! per figure (or JSON with `--json`) and cleans up. Every run is bounded in
//! time (`--max-secs`) and in requests. See `--help` and docs/performance.md.

use dtc_client::{Client as SdkClient, ClientConfig};
use dtc_ledger::LedgerClient;
use dtc_tests::v1 as pb;
use dtc_tests::{
    Client, Cluster, DtcProcess, TestParticipant, channel_for, execute_request, free_port,
    is_retryable, request, wait_for_ok,
};
use pb::coordinator_client::CoordinatorClient;
use pb::participant_client::ParticipantClient;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Code;

const HELP: &str = "\
dtc-bench: performance and recovery time of a dtc cluster (loopback only)

USAGE:
  DTC_BIN=target/release/dtc dtc-bench <SCENARIO> [FLAGS]

SCENARIOS (each also measures the floors first, in the same run):
  floor       The floors every other figure is quoted against: in the data
              directory's filesystem, append a 256-byte record + fdatasync
              (N=--floor-n), overwrite 256 bytes + fdatasync in a preallocated
              file, and one 256-byte redb row with a durable (Immediate)
              commit, the write a Raft append costs; loopback TCP ping-pong;
              a trivial gRPC call (ClusterStatus against a follower of a
              3-node cluster, and Abort against an in-process test participant).
  latency     (alias: throughput) A 3-node cluster and 2 in-process test
              participants voting prepared (no disk). Execute through the
              leader with each of --clients concurrent clients for
              --duration-secs: txn/s, p50/p99/max latency, errors, Raft
              entries per transaction, CPU seconds of the coordinators and
              of this process (clients + participants).
  ledger      The same with 2 `dtc participant` ledger processes (durable:
              every prepare and commit is an fsync'd redb commit), running
              transfers between distinct accounts per client via the client
              SDK (dtc-client), --ledger-clients levels, --ledger-secs each.
  failover    --kills SIGKILLs of the leader with no load, then --load-kills
              more under --load-clients concurrent clients. For each: time
              from SIGKILL until a new leader (polling ClusterStatus every
              5 ms), until its takeover log line, and until an Execute through
              a live node commits (same txn id, retried every 10 ms); the
              killed node is restarted and caught up before the next kill.
              Under load: longest time without any commit (gap), longest
              transaction (stall), outcomes.
  takeover    Coordinator recovery with many transactions in flight: for each
              of --sizes N, hold N transactions in prepare (a participant's
              Prepare gate), SIGKILL the leader, release the gate, and
              measure the time to a new leader, to its takeover log line
              ('takeover: found N pending transactions; scan took X ms', with
              its catch-up and scan times) and until the pending index is
              empty (every transaction aborted and acknowledged), with every
              takeover line logged (a takeover can itself be interrupted by
              another election). The last size is run again with the N
              clients retrying through the survivors (same txn id, back-off
              10 ms doubling to 320 ms): when did the last one get its answer.
  all         floor, latency, ledger, failover, takeover in turn (~3 min).

FLAGS:
  --json                  print one JSON document on stdout (tables go to stderr)
  --duration-secs S       per concurrency level of `latency` (default 10)
  --clients LIST          concurrency levels of `latency` (default 1,8,32,64)
  --ledger-clients LIST   concurrency levels of `ledger` (default 1,8,32)
  --ledger-secs S         per level of `ledger` (default 5)
  --kills N               quiet leader kills of `failover` (default 10)
  --load-kills N          leader kills under load (default 6)
  --load-clients N        concurrent clients during load kills (default 8)
  --sizes LIST            in-flight counts of `takeover` (default 200,1000)
  --fill-wave N           `takeover` begins the N transactions in waves of N
                          concurrent Executes, each wave waiting until its
                          transactions are pending (default 100; 0 = all N at
                          once, which on this machine deposes the leader for
                          N around 1000: see docs/performance.md)
  --floor-n N             samples per disk floor (default 500)
  --max-secs S            hard bound on the whole run (default 900)
  --max-requests N        bound on requests per concurrency level (default 200000)
  -h, --help              this text

The binary under test is $DTC_BIN (else target/<profile>/dtc next to this
executable). Node logs are kept when DTC_TEST_KEEP=1.
";

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    scenario: String,
    json: bool,
    duration: Duration,
    clients: Vec<usize>,
    ledger_clients: Vec<usize>,
    ledger_duration: Duration,
    kills: usize,
    load_kills: usize,
    load_clients: usize,
    sizes: Vec<usize>,
    fill_wave: usize,
    floor_n: usize,
    max_secs: u64,
    max_requests: usize,
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| format!("{p:?} is not a number"))
        })
        .collect()
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        scenario: String::new(),
        json: false,
        duration: Duration::from_secs(10),
        clients: vec![1, 8, 32, 64],
        ledger_clients: vec![1, 8, 32],
        ledger_duration: Duration::from_secs(5),
        kills: 10,
        load_kills: 6,
        load_clients: 8,
        sizes: vec![200, 1000],
        fill_wave: 100,
        floor_n: 500,
        max_secs: 900,
        max_requests: 200_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{v:?} is not a number"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--json" => o.json = true,
            "--duration-secs" => o.duration = Duration::from_secs(num(val(&a)?)?),
            "--clients" => o.clients = parse_list(&val(&a)?)?,
            "--ledger-clients" => o.ledger_clients = parse_list(&val(&a)?)?,
            "--ledger-secs" => o.ledger_duration = Duration::from_secs(num(val(&a)?)?),
            "--kills" => o.kills = num(val(&a)?)? as usize,
            "--load-kills" => o.load_kills = num(val(&a)?)? as usize,
            "--load-clients" => o.load_clients = num(val(&a)?)? as usize,
            "--sizes" => o.sizes = parse_list(&val(&a)?)?,
            "--fill-wave" => o.fill_wave = num(val(&a)?)? as usize,
            "--floor-n" => o.floor_n = num(val(&a)?)?.max(10) as usize,
            "--max-secs" => o.max_secs = num(val(&a)?)?,
            "--max-requests" => o.max_requests = num(val(&a)?)? as usize,
            s if !s.starts_with('-') && o.scenario.is_empty() => o.scenario = s.to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match o.scenario.as_str() {
        "floor" | "latency" | "throughput" | "ledger" | "failover" | "takeover" | "all" => Ok(o),
        "" => Err("no scenario given".into()),
        s => Err(format!("unknown scenario {s:?}")),
    }
}

// ---------------------------------------------------------------------------
// Output

/// Tables go to stdout, or to stderr when stdout carries JSON.
struct Out {
    json: bool,
    doc: serde_json::Map<String, Value>,
}

impl Out {
    fn say(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }

    fn table(&self, title: &str, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.len());
                }
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
        };
        self.say(&format!("\n## {title}"));
        self.say(&line(header.iter().map(|h| h.to_string()).collect()));
        self.say(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        for r in rows {
            self.say(&line(r.clone()));
        }
    }

    fn put(&mut self, key: &str, v: Value) {
        self.doc.insert(key.to_string(), v);
    }
}

fn progress(s: &str) {
    eprintln!("[dtc-bench {}] {s}", clock_hms());
}

fn clock_hms() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2}", ms(d))
}

// ---------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    if samples.is_empty() {
        return Stats {
            n: 0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            max: Duration::ZERO,
            mean: Duration::ZERO,
        };
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let total: Duration = v.iter().sum();
    Stats {
        n: v.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: total / v.len() as u32,
    }
}

impl Stats {
    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }
}

/// Median and max of a list of durations (for per-kill figures).
fn med_max(v: &[Duration]) -> (Duration, Duration) {
    let s = stats(v);
    (s.p50, s.max)
}

// ---------------------------------------------------------------------------
// Machine, CPU accounting

fn machine() -> Value {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
            .unwrap_or_else(|e| format!("({cmd}: {e})"))
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let bin = dtc_tests::dtc_bin().display().to_string();
    let sha = run("sha256sum", &[&bin]);
    let git_dir = env!("CARGO_MANIFEST_DIR");
    json!({
        "date_utc": run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "dtc_bin": bin,
        "dtc_bin_sha256": sha.split_whitespace().next().unwrap_or(""),
        "git_head": run("git", &["-C", git_dir, "rev-parse", "--short", "HEAD"]),
        "git_dirty_files": run("git", &["-C", git_dir, "status", "--porcelain"]).lines().count(),
        "nproc": run("nproc", &[]),
        "free_m": run("free", &["-m"]),
        "cpu": cpu,
        "kernel": run("uname", &["-r"]),
        "loadavg": loadavg(),
    })
}

/// The 1/5/15-minute load averages (other work on this shared machine).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds (user + system) of one process, from /proc/PID/stat.
fn cpu_secs_of(stat_path: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

/// Total CPU seconds of the processes whose command line mentions `needle`
/// (the cluster's temporary directory: its coordinators and participants).
fn cpu_secs_matching(needle: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            total += cpu_secs_of(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
        }
    }
    total
}

fn cpu_self() -> f64 {
    cpu_secs_of(Path::new("/proc/self/stat")).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Floors

struct DiskFloor {
    append: Stats,
    overwrite: Stats,
    redb: Stats,
}

fn disk_floor(dir: &Path, n: usize) -> std::io::Result<DiskFloor> {
    std::fs::create_dir_all(dir)?;
    let record = [0xa5u8; 256];
    // Append + fdatasync: the file grows, so the metadata (size) is synced too.
    let path = dir.join("floor-append.dat");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    f.sync_all()?;
    let mut append = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&record, (i * record.len()) as u64)?;
        f.sync_data()?;
        append.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    // Overwrite + fdatasync in a preallocated (written and synced) file.
    let path = dir.join("floor-overwrite.dat");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = 4096usize;
    f.write_all_at(&vec![0u8; block * n], 0)?;
    f.sync_all()?;
    let mut overwrite = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&record, (i * block) as u64)?;
        f.sync_data()?;
        overwrite.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    // One 256-byte row per durable redb commit (what one Raft append costs).
    let path = dir.join("floor.redb");
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let mut redb_samples = Vec::with_capacity(n);
    {
        let db = redb::Database::create(&path).map_err(std::io::Error::other)?;
        for i in 0..n as u64 {
            let t = Instant::now();
            let tx = db.begin_write().map_err(std::io::Error::other)?;
            {
                let mut table = tx.open_table(T).map_err(std::io::Error::other)?;
                table
                    .insert(i, record.as_slice())
                    .map_err(std::io::Error::other)?;
            }
            tx.commit().map_err(std::io::Error::other)?;
            redb_samples.push(t.elapsed());
        }
    }
    std::fs::remove_file(&path)?;
    Ok(DiskFloor {
        append: stats(&append),
        overwrite: stats(&overwrite),
        redb: stats(&redb_samples),
    })
}

/// 1-byte ping-pong over loopback TCP (TCP_NODELAY), with an echo thread.
fn tcp_floor(n: usize) -> std::io::Result<Stats> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [1u8; 1];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        if i >= 100 {
            samples.push(t.elapsed());
        }
    }
    drop(c);
    let _ = echo.join();
    Ok(stats(&samples))
}

/// Sequential trivial gRPC calls: ClusterStatus against node `addr`.
async fn grpc_status_floor(addr: SocketAddr, n: usize) -> Stats {
    let mut c = CoordinatorClient::new(channel_for(addr));
    timed(n, 50, async |_| {
        c.cluster_status(request(pb::ClusterStatusRequest {}, Duration::from_secs(1)))
            .await
            .is_ok()
    })
    .await
}

/// Calls `call` (given the call number) `warmup` times untimed, then `n`
/// times timed, one after another; the successful timed calls make the
/// figures.
async fn timed(n: usize, warmup: usize, mut call: impl AsyncFnMut(usize) -> bool) -> Stats {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let t = Instant::now();
        if call(i).await && i >= warmup {
            samples.push(t.elapsed());
        }
    }
    stats(&samples)
}

/// Sequential single replicated writes: RegisterParticipant (one Raft entry:
/// leader log append + quorum + apply) of a participant nobody uses, via
/// the leader at `addr`.
async fn raft_write_floor(addr: SocketAddr, n: usize) -> Stats {
    let mut c = CoordinatorClient::new(channel_for(addr));
    timed(n, 20, async |i| {
        c.register_participant(request(
            pb::RegisterParticipantRequest {
                name: "bench-unused".into(),
                endpoint: format!("http://127.0.0.1:{}", 1 + i % 2),
            },
            Duration::from_secs(5),
        ))
        .await
        .is_ok()
    })
    .await
}

/// Sequential trivial gRPC calls to an in-process test participant (Abort of
/// an unknown id: an in-memory tombstone; client and server in this process).
async fn grpc_participant_floor(p: &TestParticipant, n: usize) -> Stats {
    let addr: SocketAddr = p.endpoint()["http://".len()..].parse().expect("addr");
    let mut c = ParticipantClient::new(channel_for(addr));
    timed(n, 50, async |i| {
        c.abort(request(
            pb::AbortRequest {
                txn_id: format!("floor-{i}"),
                participant: p.name().to_string(),
                reason: "floor".into(),
            },
            Duration::from_secs(1),
        ))
        .await
        .is_ok()
    })
    .await
}

/// The floors of a started cluster (through a follower, the leader and
/// `participant`), reported under `key`.
async fn cluster_floors(
    out: &mut Out,
    key: &str,
    cluster: &Cluster,
    leader: u64,
    participant: Option<&TestParticipant>,
    n: usize,
) {
    let f = follower_of(cluster, leader);
    let (node, leader) = (cluster.addr(f), cluster.addr(leader));
    floors(
        out,
        key,
        cluster.root(),
        Some(node),
        Some(leader),
        participant,
        n,
    )
    .await;
}

/// Measures every floor and reports it under `key`.
async fn floors(
    out: &mut Out,
    key: &str,
    data_dir: &Path,
    node: Option<SocketAddr>,
    leader: Option<SocketAddr>,
    participant: Option<&TestParticipant>,
    n: usize,
) {
    let dir = data_dir.join("floor");
    let disk = tokio::task::spawn_blocking(move || disk_floor(&dir, n))
        .await
        .expect("disk floor task");
    let tcp = tokio::task::spawn_blocking(move || tcp_floor(2000))
        .await
        .expect("tcp floor task");
    let status = match node {
        Some(a) => Some(grpc_status_floor(a, 1000).await),
        None => None,
    };
    let part = match participant {
        Some(p) => Some(grpc_participant_floor(p, 1000).await),
        None => None,
    };
    let raft = match leader {
        Some(a) => Some(raft_write_floor(a, 300).await),
        None => None,
    };
    let mut rows = Vec::new();
    let mut j = serde_json::Map::new();
    j.insert("dir".into(), json!(data_dir.display().to_string()));
    let mut add = |name: &str, what: &str, s: &Stats| {
        rows.push(vec![
            name.to_string(),
            s.n.to_string(),
            format!("{:.3}", ms(s.p50)),
            format!("{:.3}", ms(s.p99)),
            format!("{:.3}", ms(s.max)),
            what.to_string(),
        ]);
        j.insert(name.to_string(), s.json());
    };
    match &disk {
        Ok(d) => {
            add(
                "append+fdatasync",
                "256 B appended to a growing file",
                &d.append,
            );
            add(
                "overwrite+fdatasync",
                "256 B overwritten in a preallocated file",
                &d.overwrite,
            );
            add(
                "redb commit",
                "1 row of 256 B, Durability::Immediate",
                &d.redb,
            );
        }
        Err(e) => progress(&format!("disk floor failed: {e}")),
    }
    match &tcp {
        Ok(s) => add("tcp rtt", "loopback 1-byte ping-pong", s),
        Err(e) => progress(&format!("tcp floor failed: {e}")),
    }
    if let Some(s) = &status {
        add("grpc ClusterStatus", "to a coordinator follower", s);
    }
    if let Some(s) = &part {
        add("grpc in-process", "Abort to a test participant", s);
    }
    if let Some(s) = &raft {
        add(
            "raft write",
            "RegisterParticipant via the leader: 1 replicated entry",
            s,
        );
    }
    out.table(
        &format!("floors ({key}; data dir {})", data_dir.display()),
        &["floor", "n", "p50 ms", "p99 ms", "max ms", "what"],
        &rows,
    );
    out.put(&format!("floors_{key}"), Value::Object(j));
}

// ---------------------------------------------------------------------------
// Cluster helpers

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn start_cluster(extra: &[&str], participants: &[&TestParticipant]) -> (Cluster, u64) {
    // The product's timing (`dtc coordinator --help` defaults), not the
    // test suite's slower one.
    let mut options = dtc_tests::ClusterOptions::new(3);
    options.heartbeat_ms = 20;
    options.election_timeout_ms = (60, 120);
    options.extra_args = extra.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::with_options(options);
    let leader = cluster.wait_for_stable_leader(secs(30)).await;
    for p in participants {
        cluster.register(p, secs(15)).await;
    }
    // Every node applied the registrations before anything is measured.
    for id in cluster.ids() {
        cluster.wait_caught_up(id, secs(15)).await;
    }
    (cluster, leader)
}

fn follower_of(cluster: &Cluster, leader: u64) -> u64 {
    cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower")
}

/// The takeover line of a node log: (wall time in µs since the epoch,
/// pending count, scan ms, catch-up ms).
#[derive(Debug, Clone, Copy)]
struct TakeoverLine {
    at_us: i64,
    pending: u64,
    scan_ms: f64,
    catch_up_ms: f64,
}

fn parse_takeover_lines(log: &str) -> Vec<TakeoverLine> {
    log.lines()
        .filter_map(|l| {
            let pos = l.find("takeover: found ")?;
            let pending = l[pos + "takeover: found ".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let field = |name: &str| -> Option<f64> {
                let p = l.find(&format!("{name}="))? + name.len() + 1;
                l[p..].split_whitespace().next()?.parse().ok()
            };
            Some(TakeoverLine {
                at_us: parse_rfc3339_us(l.split_whitespace().next()?)?,
                pending,
                scan_ms: field("scan_ms").unwrap_or(f64::NAN),
                catch_up_ms: field("catch_up_ms").unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// `2026-11-26T05:48:05.123456Z` → microseconds since the Unix epoch.
fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let digits: String = frac.chars().take(6).collect();
    let us = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + us)
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn us_to_duration(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// Polls the live nodes' ClusterStatus every 5 ms until one says it is the
/// leader of a term above `old_term`. Returns (node, term, elapsed since t0).
async fn wait_new_leader(cluster: &Cluster, old_term: u64, t0: Instant) -> (u64, u64, Duration) {
    let deadline = t0 + secs(30);
    loop {
        let ids = cluster.started_ids();
        let answers = futures::future::join_all(ids.iter().map(|id| async move {
            let mut c = cluster.client(*id);
            c.cluster_status(request(
                pb::ClusterStatusRequest {},
                Duration::from_millis(300),
            ))
            .await
            .ok()
            .map(tonic::Response::into_inner)
        }))
        .await;
        let at = t0.elapsed();
        if let Some(s) = answers
            .into_iter()
            .flatten()
            .filter(|s| s.role == "leader" && s.term > old_term)
            .max_by_key(|s| s.term)
        {
            return (s.node_id, s.term, at);
        }
        assert!(Instant::now() < deadline, "no new leader within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Execute `req` through the nodes of `via` in turn until an answer,
/// retrying retryable statuses with the same id every `backoff`. Returns the
/// answer (or last status) and the number of attempts.
async fn execute_until_answer(
    clients: &[Client],
    req: &pb::ExecuteRequest,
    per_call: Duration,
    (mut backoff, max_backoff): (Duration, Duration),
    within: Duration,
) -> (Result<pb::ExecuteResponse, tonic::Status>, u32) {
    let deadline = Instant::now() + within;
    let mut attempts = 0u32;
    let mut i = 0usize;
    loop {
        attempts += 1;
        let mut c = clients[i % clients.len()].clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let r = c
            .execute(request(
                req.clone(),
                per_call.min(left).max(Duration::from_millis(1)),
            ))
            .await
            .map(tonic::Response::into_inner);
        match r {
            Err(s)
                if (is_retryable(&s) || s.code() == Code::ResourceExhausted)
                    && Instant::now() + backoff < deadline =>
            {
                i += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
            other => return (other, attempts),
        }
    }
}

async fn pending_count(cluster: &Cluster, id: u64) -> Option<u64> {
    cluster.status(id).await.map(|s| s.pending)
}

/// The current leader (highest term claiming it), its term and its pending count.
async fn leader_view(cluster: &Cluster) -> Option<(u64, u64, u64)> {
    let statuses = cluster.statuses().await;
    dtc_harness::cluster::leader_view(statuses.values()).map(|s| (s.node_id, s.term, s.pending))
}

// ---------------------------------------------------------------------------
// Scenario: floor

async fn scenario_floor(out: &mut Out, o: &Opts) {
    let alpha = TestParticipant::start("alpha").await;
    let (cluster, leader) = start_cluster(&[], &[&alpha]).await;
    cluster_floors(out, "floor", &cluster, leader, Some(&alpha), o.floor_n).await;
}

// ---------------------------------------------------------------------------
// Scenario: latency / throughput

#[derive(Default)]
struct LevelResult {
    latencies: Vec<Duration>,
    committed: u64,
    aborted: u64,
    errors: std::collections::BTreeMap<String, u64>,
    elapsed: Duration,
}

impl LevelResult {
    fn merge(&mut self, other: LevelResult) {
        self.latencies.extend(other.latencies);
        self.committed += other.committed;
        self.aborted += other.aborted;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            "0".into()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// `clients` tasks, each with its own connection to `addr`, run Execute
/// back to back for `dur` (at most `max_requests` in all).
async fn raw_level(
    addr: SocketAddr,
    clients: usize,
    dur: Duration,
    max_requests: usize,
    prefix: &str,
) -> LevelResult {
    let started = Instant::now();
    let end = started + dur;
    let per_client = max_requests.div_ceil(clients.max(1));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut client = CoordinatorClient::new(channel_for(addr));
                let mut r = LevelResult::default();
                let mut k = 0usize;
                while Instant::now() < end && k < per_client {
                    let req = execute_request(
                        &format!("{prefix}-{c}-{k}"),
                        &[("alpha", b"a"), ("beta", b"b")],
                        5000,
                    );
                    k += 1;
                    let t = Instant::now();
                    match client.execute(request(req, secs(10))).await {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            if resp.outcome() == pb::Outcome::Committed {
                                r.committed += 1;
                                r.latencies.push(t.elapsed());
                            } else {
                                r.aborted += 1;
                            }
                        }
                        Err(s) => *r.errors.entry(format!("{:?}", s.code())).or_default() += 1,
                    }
                }
                r
            })
        })
        .collect();
    let mut total = LevelResult::default();
    for t in tasks {
        total.merge(t.await.expect("client task"));
    }
    total.elapsed = started.elapsed();
    total
}

struct LevelRow {
    clients: usize,
    result: LevelResult,
    raft_entries: u64,
    cpu_coord: f64,
    cpu_self: f64,
}

fn level_rows(out: &mut Out, key: &str, title: &str, levels: &[LevelRow]) {
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for l in levels {
        let r = &l.result;
        let s = stats(&r.latencies);
        let secs = r.elapsed.as_secs_f64();
        let tps = r.committed as f64 / secs;
        let per_txn = if r.committed + r.aborted > 0 {
            l.raft_entries as f64 / (r.committed + r.aborted) as f64
        } else {
            0.0
        };
        rows.push(vec![
            l.clients.to_string(),
            r.committed.to_string(),
            format!("{tps:.0}"),
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.max),
            r.aborted.to_string(),
            r.errors_text(),
            format!("{per_txn:.2}"),
            format!("{:.0}%", 100.0 * l.cpu_coord / secs),
            format!("{:.0}%", 100.0 * l.cpu_self / secs),
        ]);
        js.push(json!({
            "clients": l.clients,
            "seconds": secs,
            "committed": r.committed,
            "aborted": r.aborted,
            "errors": r.errors,
            "txn_per_s": tps,
            "latency": s.json(),
            "raft_entries_per_txn": per_txn,
            "cpu_coordinators_pct_of_one_core": 100.0 * l.cpu_coord / secs,
            "cpu_bench_process_pct_of_one_core": 100.0 * l.cpu_self / secs,
        }));
    }
    out.table(
        title,
        &[
            "clients",
            "committed",
            "txn/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "aborted",
            "errors",
            "raft/txn",
            "cpu coord",
            "cpu bench",
        ],
        &rows,
    );
    out.put(key, Value::Array(js));
}

async fn scenario_latency(out: &mut Out, o: &Opts) {
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    let (cluster, leader) = start_cluster(&[], &[&alpha, &beta]).await;
    cluster_floors(out, "latency", &cluster, leader, Some(&alpha), o.floor_n).await;
    let addr = cluster.addr(leader);
    progress("warm-up: 200 transactions");
    let warm = raw_level(addr, 4, secs(30), 200, "warm").await;
    assert_eq!(
        warm.error_count(),
        0,
        "warm-up errors: {}",
        warm.errors_text()
    );
    let needle = cluster.root().display().to_string();
    let mut levels = Vec::new();
    for &c in &o.clients {
        progress(&format!(
            "latency: {c} clients for {:?} via leader {leader}",
            o.duration
        ));
        let before = cluster.status(leader).await.map(|s| s.last_applied);
        let (cc, cs) = (cpu_secs_matching(&needle), cpu_self());
        let r = raw_level(addr, c, o.duration, o.max_requests, &format!("l{c}")).await;
        let (cc2, cs2) = (cpu_secs_matching(&needle), cpu_self());
        let after = cluster.status(leader).await.map(|s| s.last_applied);
        let raft_entries = match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        };
        levels.push(LevelRow {
            clients: c,
            result: r,
            raft_entries,
            cpu_coord: cc2 - cc,
            cpu_self: cs2 - cs,
        });
    }
    // Everything the clients saw answered is complete (no pending left).
    let pending = pending_count(&cluster, leader).await;
    level_rows(
        out,
        "latency",
        &format!(
            "latency/throughput: 3 coordinators, 2 in-process participants (no disk), Execute via the leader, {:?} per level (pending after: {pending:?})",
            o.duration
        ),
        &levels,
    );
    let v = [alpha.violations(), beta.violations()].concat();
    if !v.is_empty() {
        progress(&format!("PROTOCOL VIOLATIONS: {v:?}"));
    }
}

// ---------------------------------------------------------------------------
// Scenario: ledger (durable participants, client SDK)

async fn scenario_ledger(out: &mut Out, o: &Opts) {
    let (cluster, leader) = start_cluster(&[], &[]).await;
    cluster_floors(out, "ledger", &cluster, leader, None, o.floor_n).await;
    let coords = cluster.addrs_arg();
    let mut procs = Vec::new();
    for name in ["bank-a", "bank-b"] {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = cluster.root().join(name);
        let log = cluster.root().join(format!("{name}.log"));
        // The ledger's default in-doubt interval.
        let args = dtc_harness::cluster::ledger_args(name, listen, &dir, &coords, 5000);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.push(DtcProcess::spawn(&args, &log));
    }
    wait_for_ok(secs(30), "both ledgers registered", || async {
        let s = cluster.status(leader).await.ok_or("no status")?;
        let has = |n: &str| s.participants.iter().any(|p| p.name == n);
        if has("bank-a") && has("bank-b") {
            Ok(())
        } else {
            Err(format!("{:?}", s.participants))
        }
    })
    .await;
    for id in cluster.ids() {
        cluster.wait_caught_up(id, secs(15)).await;
    }
    // The leader first: the SDK tries the configured nodes in order and then
    // sticks to the node that answered.
    let mut addrs = vec![cluster.addr(leader).to_string()];
    addrs.extend(
        cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .map(|id| cluster.addr(id).to_string()),
    );
    let sdk = SdkClient::with_config(addrs, ClientConfig::default()).expect("sdk client");
    let max_clients = o.ledger_clients.iter().copied().max().unwrap_or(1);
    progress(&format!("ledger: funding {max_clients} accounts"));
    for k in 0..max_clients {
        let r = sdk
            .deposit(("bank-a", &format!("acct-{k}")), 1_000_000_000)
            .execute()
            .await
            .expect("deposit");
        assert!(r.is_committed(), "deposit aborted: {r:?}");
    }
    let needle = cluster.root().display().to_string();
    let mut levels = Vec::new();
    for &c in &o.ledger_clients {
        progress(&format!(
            "ledger: {c} clients for {:?} (transfers bank-a -> bank-b)",
            o.ledger_duration
        ));
        let before = cluster.status(leader).await.map(|s| s.last_applied);
        let (cc, cs) = (cpu_secs_matching(&needle), cpu_self());
        let started = Instant::now();
        let end = started + o.ledger_duration;
        let per_client = o.max_requests.div_ceil(c.max(1));
        let tasks: Vec<_> = (0..c)
            .map(|k| {
                let sdk = sdk.clone();
                tokio::spawn(async move {
                    let mut r = LevelResult::default();
                    let acct = format!("acct-{k}");
                    let mut n = 0usize;
                    while Instant::now() < end && n < per_client {
                        n += 1;
                        let t = Instant::now();
                        match sdk
                            .transfer(("bank-a", &acct), ("bank-b", &acct), 1)
                            .timeout(secs(5))
                            .deadline(secs(15))
                            .execute()
                            .await
                        {
                            Ok(o) if o.is_committed() => {
                                r.committed += 1;
                                r.latencies.push(t.elapsed());
                            }
                            Ok(_) => r.aborted += 1,
                            Err(e) => {
                                let k = format!("{e}");
                                let k: String = k.chars().take(40).collect();
                                *r.errors.entry(k).or_default() += 1;
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        let mut total = LevelResult::default();
        for t in tasks {
            total.merge(t.await.expect("ledger client"));
        }
        total.elapsed = started.elapsed();
        let (cc2, cs2) = (cpu_secs_matching(&needle), cpu_self());
        let after = cluster.status(leader).await.map(|s| s.last_applied);
        let raft_entries = match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        };
        levels.push(LevelRow {
            clients: c,
            result: total,
            raft_entries,
            cpu_coord: cc2 - cc,
            cpu_self: cs2 - cs,
        });
    }
    // Conservation: what left bank-a arrived at bank-b.
    let mut moved_a = 0i64;
    let mut moved_b = 0i64;
    for k in 0..max_clients {
        let acct = format!("acct-{k}");
        moved_a += 1_000_000_000 - sdk.balance("bank-a", &acct).await.expect("balance a");
        moved_b += sdk.balance("bank-b", &acct).await.expect("balance b");
    }
    let committed: u64 = levels.iter().map(|l| l.result.committed).sum();
    level_rows(
        out,
        "ledger",
        &format!(
            "ledger transfers: 3 coordinators, 2 `dtc participant` ledger processes (fsync'd), client SDK, {:?} per level; cpu coord = coordinators + ledgers",
            o.ledger_duration
        ),
        &levels,
    );
    out.say(&format!(
        "conservation check: {committed} committed transfers; debited {moved_a}, credited {moved_b}"
    ));
    out.put(
        "ledger_conservation",
        json!({"committed": committed, "debited": moved_a, "credited": moved_b}),
    );
    drop(procs);
}

// ---------------------------------------------------------------------------
// Scenario: failover

/// One load transaction: when it started and ended (relative to the run
/// start), its outcome and attempts.
#[derive(Debug, Clone)]
struct LoadTxn {
    start: Duration,
    end: Duration,
    committed: bool,
    failed: bool,
}

struct KillResult {
    killed: u64,
    winner: u64,
    elected: Duration,
    takeover_line: Option<Duration>,
    committed: Duration,
    attempts: u32,
    probe_outcome: String,
    with_load: bool,
    at: Duration,
}

async fn scenario_failover(out: &mut Out, o: &Opts) {
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    let (mut cluster, leader) = start_cluster(&[], &[&alpha, &beta]).await;
    cluster_floors(out, "failover", &cluster, leader, Some(&alpha), o.floor_n).await;
    let run_start = Instant::now();
    let all_addrs: Vec<SocketAddr> = cluster.ids().iter().map(|id| cluster.addr(*id)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load_tasks = Vec::new();
    let mut kills: Vec<KillResult> = Vec::new();
    for round in 0..o.kills + o.load_kills {
        let with_load = round >= o.kills;
        if with_load && load_tasks.is_empty() {
            progress(&format!(
                "failover: starting {} load clients",
                o.load_clients
            ));
            for c in 0..o.load_clients {
                let stop = stop.clone();
                let addrs = all_addrs.clone();
                load_tasks.push(tokio::spawn(load_client(c, addrs, stop, run_start)));
            }
            tokio::time::sleep(secs(1)).await;
        }
        let leader = cluster.wait_for_stable_leader(secs(30)).await;
        for id in cluster.ids() {
            cluster.wait_caught_up(id, secs(30)).await;
        }
        let old_term = cluster.status(leader).await.map(|s| s.term).unwrap_or(0);
        let survivors: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let offsets: Vec<(u64, u64)> = survivors
            .iter()
            .map(|id| (*id, cluster.log_len(*id)))
            .collect();
        let clients: Vec<Client> = survivors.iter().map(|id| cluster.client(*id)).collect();
        let req = execute_request(
            &format!("failover-probe-{round}"),
            &[("alpha", b"a"), ("beta", b"b")],
            5000,
        );
        let wall0 = wall_us();
        let t0 = Instant::now();
        let at = run_start.elapsed();
        cluster.kill(leader);
        let (elected, probe) = tokio::join!(wait_new_leader(&cluster, old_term, t0), async {
            let (r, attempts) = execute_until_answer(
                &clients,
                &req,
                secs(2),
                (Duration::from_millis(10), Duration::from_millis(10)),
                secs(30),
            )
            .await;
            (r, attempts, t0.elapsed())
        });
        let (winner, _term, elected_at) = elected;
        let (probe_r, attempts, committed_at) = probe;
        let probe_outcome = match &probe_r {
            Ok(r) => format!("{:?}", r.outcome()),
            Err(s) => format!("{:?}", s.code()),
        };
        let takeover_line = offsets
            .iter()
            .find(|(id, _)| *id == winner)
            .and_then(|(id, off)| {
                parse_takeover_lines(&cluster.log_since(*id, *off))
                    .first()
                    .map(|l| us_to_duration(l.at_us - wall0))
            });
        progress(&format!(
            "kill {round}: node {leader} killed; node {winner} leader after {:.0} ms, takeover line {:?}, probe {probe_outcome} after {:.0} ms ({attempts} attempts){}",
            ms(elected_at),
            takeover_line.map(ms),
            ms(committed_at),
            if with_load { " [load]" } else { "" }
        ));
        kills.push(KillResult {
            killed: leader,
            winner,
            elected: elected_at,
            takeover_line,
            committed: committed_at,
            attempts,
            probe_outcome,
            with_load,
            at,
        });
        cluster.restart(leader);
        cluster.wait_caught_up(leader, secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut load: Vec<LoadTxn> = Vec::new();
    for t in load_tasks {
        load.extend(t.await.expect("load client"));
    }
    cluster.wait_no_pending(secs(30)).await;

    // Per-kill table.
    let mut rows = Vec::new();
    let mut js = Vec::new();
    let load_start = kills
        .iter()
        .find(|k| k.with_load)
        .map(|k| k.at)
        .unwrap_or_default();
    for (i, k) in kills.iter().enumerate() {
        let next_at = kills.get(i + 1).map(|n| n.at).unwrap_or(Duration::MAX);
        // Under load: the first commit after the kill, and the longest
        // transaction that ended before the next kill.
        let (gap, stall, aborted) = if k.with_load {
            let gap = load
                .iter()
                .filter(|t| t.committed && t.end >= k.at)
                .map(|t| t.end - k.at)
                .min();
            let window: Vec<&LoadTxn> = load
                .iter()
                .filter(|t| t.end >= k.at && t.end < next_at)
                .collect();
            let stall = window.iter().map(|t| t.end - t.start).max();
            let aborted = window.iter().filter(|t| !t.committed && !t.failed).count();
            (gap, stall, Some(aborted))
        } else {
            (None, None, None)
        };
        rows.push(vec![
            i.to_string(),
            if k.with_load {
                format!("{} clients", o.load_clients)
            } else {
                "none".into()
            },
            k.killed.to_string(),
            k.winner.to_string(),
            format!("{:.0}", ms(k.elected)),
            k.takeover_line
                .map(|d| format!("{:.0}", ms(d)))
                .unwrap_or("-".into()),
            format!("{:.0}", ms(k.committed)),
            format!("{} ({})", k.probe_outcome, k.attempts),
            gap.map(|d| format!("{:.0}", ms(d))).unwrap_or("-".into()),
            stall.map(|d| format!("{:.0}", ms(d))).unwrap_or("-".into()),
            aborted.map(|a| a.to_string()).unwrap_or("-".into()),
        ]);
        js.push(json!({
            "with_load": k.with_load,
            "killed": k.killed,
            "new_leader": k.winner,
            "elected_ms": ms(k.elected),
            "takeover_line_ms": k.takeover_line.map(ms),
            "probe_answered_ms": ms(k.committed),
            "probe_outcome": k.probe_outcome,
            "probe_attempts": k.attempts,
            "load_gap_ms": gap.map(ms),
            "load_stall_ms": stall.map(ms),
            "load_aborted": aborted,
        }));
    }
    out.table(
        "failover: SIGKILL of the leader (times in ms from the SIGKILL)",
        &[
            "#",
            "load",
            "killed",
            "new leader",
            "elected",
            "takeover line",
            "probe answered",
            "probe (attempts)",
            "load gap",
            "load stall",
            "load aborted",
        ],
        &rows,
    );
    // Summary.
    let mut srows = Vec::new();
    let mut sj = serde_json::Map::new();
    for (name, sel) in [("no load", false), ("under load", true)] {
        let ks: Vec<&KillResult> = kills.iter().filter(|k| k.with_load == sel).collect();
        if ks.is_empty() {
            continue;
        }
        let e: Vec<Duration> = ks.iter().map(|k| k.elected).collect();
        let c: Vec<Duration> = ks.iter().map(|k| k.committed).collect();
        let tl: Vec<Duration> = ks.iter().filter_map(|k| k.takeover_line).collect();
        let (em, ex) = med_max(&e);
        let (cm, cx) = med_max(&c);
        let (tm, tx) = med_max(&tl);
        let committed = ks.iter().filter(|k| k.probe_outcome == "Committed").count();
        let winners: Vec<String> = ks
            .iter()
            .map(|k| format!("{}->{}", k.killed, k.winner))
            .collect();
        srows.push(vec![
            name.to_string(),
            ks.len().to_string(),
            format!("{:.0} / {:.0}", ms(em), ms(ex)),
            format!("{:.0} / {:.0}", ms(tm), ms(tx)),
            format!("{:.0} / {:.0}", ms(cm), ms(cx)),
            format!("{committed}/{}", ks.len()),
            winners.join(" "),
        ]);
        sj.insert(
            name.replace(' ', "_"),
            json!({
                "kills": ks.len(),
                "elected_median_ms": ms(em), "elected_max_ms": ms(ex),
                "takeover_line_median_ms": ms(tm), "takeover_line_max_ms": ms(tx),
                "probe_median_ms": ms(cm), "probe_max_ms": ms(cx),
                "probe_committed": committed,
                "killed_to_winner": winners,
            }),
        );
    }
    out.table(
        "failover summary (median / max, ms from SIGKILL)",
        &[
            "kills",
            "n",
            "new leader",
            "takeover line",
            "Execute commits",
            "probe committed",
            "killed->new leader",
        ],
        &srows,
    );
    if !load.is_empty() {
        let in_load: Vec<&LoadTxn> = load.iter().filter(|t| t.start >= load_start).collect();
        let lat: Vec<Duration> = in_load
            .iter()
            .filter(|t| t.committed)
            .map(|t| t.end - t.start)
            .collect();
        let s = stats(&lat);
        let committed = in_load.iter().filter(|t| t.committed).count();
        let aborted = in_load.iter().filter(|t| !t.committed && !t.failed).count();
        let failed = in_load.iter().filter(|t| t.failed).count();
        out.say(&format!(
            "load clients over the whole load phase: {} transactions, {committed} committed, {aborted} aborted (caught by a failover), {failed} without an answer; committed latency p50 {} ms, p99 {} ms, max {} ms",
            in_load.len(),
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.max)
        ));
        sj.insert(
            "load".into(),
            json!({"clients": o.load_clients, "transactions": in_load.len(), "committed": committed,
                   "aborted": aborted, "failed": failed, "latency": s.json()}),
        );
    }
    sj.insert("kills".into(), Value::Array(js));
    out.put("failover", Value::Object(sj));
    let v = [alpha.violations(), beta.violations()].concat();
    if !v.is_empty() {
        progress(&format!("PROTOCOL VIOLATIONS: {v:?}"));
    }
}

/// A client that runs transactions back to back through any node, retrying
/// each with the same id (10 ms back-off, next node) until it has an answer.
async fn load_client(
    c: usize,
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    run_start: Instant,
) -> Vec<LoadTxn> {
    let clients: Vec<Client> = addrs
        .iter()
        .map(|a| CoordinatorClient::new(channel_for(*a)))
        .collect();
    let mut out = Vec::new();
    let mut k = 0usize;
    let mut next = c;
    while !stop.load(Ordering::Relaxed) && k < 1_000_000 {
        let req = execute_request(
            &format!("load-{c}-{k}"),
            &[("alpha", b"a"), ("beta", b"b")],
            5000,
        );
        k += 1;
        let start = run_start.elapsed();
        let deadline = Instant::now() + secs(20);
        let (committed, failed) = loop {
            let mut cl = clients[next % clients.len()].clone();
            match cl.execute(request(req.clone(), secs(3))).await {
                Ok(r) => break (r.into_inner().outcome() == pb::Outcome::Committed, false),
                Err(s)
                    if (is_retryable(&s) || s.code() == Code::ResourceExhausted)
                        && Instant::now() < deadline =>
                {
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => break (false, true),
            }
        };
        out.push(LoadTxn {
            start,
            end: run_start.elapsed(),
            committed,
            failed,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Scenario: takeover

struct TakeoverResult {
    n: usize,
    retrying_clients: bool,
    fill_wave: usize,
    fill: Duration,
    /// Leader changes while the N transactions were being begun (no kill).
    fill_elections: u64,
    pending_before: u64,
    killed: u64,
    winner: u64,
    elected: Duration,
    /// Every takeover line logged by the survivors after the kill.
    lines: Vec<(u64, TakeoverLine)>,
    first_line_at: Option<Duration>,
    resolved: Option<Duration>,
    final_leader: u64,
    clients_answered: Option<Duration>,
    client_outcomes: String,
    alpha_aborted: usize,
    beta_aborted: usize,
    committed_anywhere: usize,
    note: String,
}

/// One client of the takeover run: Execute through the leader; with
/// `retrying`, retry through the survivors after the kill (same id,
/// back-off 10 ms doubling to 320 ms) and return when and what it heard.
async fn held_client(
    mut c: Client,
    req: pb::ExecuteRequest,
    retrying: bool,
    survivors: Vec<SocketAddr>,
) -> Option<(Instant, String)> {
    let first = c.execute(request(req.clone(), secs(150))).await;
    if !retrying {
        return None;
    }
    if let Ok(r) = first {
        return Some((Instant::now(), format!("{:?}", r.into_inner().outcome())));
    }
    let clients: Vec<Client> = survivors
        .iter()
        .map(|a| CoordinatorClient::new(channel_for(*a)))
        .collect();
    let (r, _) = execute_until_answer(
        &clients,
        &req,
        secs(5),
        (Duration::from_millis(10), Duration::from_millis(320)),
        secs(60),
    )
    .await;
    Some((
        Instant::now(),
        match r {
            Ok(r) => format!("{:?}", r.outcome()),
            Err(s) => format!("{:?}", s.code()),
        },
    ))
}

async fn takeover_run(
    n: usize,
    retrying: bool,
    fill_wave: usize,
    floor_n: usize,
    out: &mut Out,
) -> TakeoverResult {
    let alpha = TestParticipant::start("alpha").await;
    let beta = TestParticipant::start("beta").await;
    let max_in_flight = (n * 2 + 100).to_string();
    let (mut cluster, leader) =
        start_cluster(&["--max-in-flight", &max_in_flight], &[&alpha, &beta]).await;
    if floor_n > 0 {
        cluster_floors(out, "takeover", &cluster, leader, Some(&alpha), floor_n).await;
    }
    alpha.hold_prepares();
    let term_before = cluster.status(leader).await.map(|s| s.term).unwrap_or(0);
    let survivors: Vec<SocketAddr> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| cluster.addr(id))
        .collect();
    let leader_addr = cluster.addr(leader);
    // One connection per 100 clients.
    let channels: Vec<_> = (0..n.div_ceil(100))
        .map(|_| channel_for(leader_addr))
        .collect();
    // Begin the N transactions in waves (each wave waits until its
    // transactions are in the pending index), or all at once (wave 0).
    let wave = if fill_wave == 0 { n } else { fill_wave };
    let fill_start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut pending_before = 0u64;
    let mut fill_failed = None;
    while tasks.len() < n && fill_failed.is_none() {
        let end = (tasks.len() + wave).min(n);
        for i in tasks.len()..end {
            let req = execute_request(
                &format!("held-{n}-{i}"),
                &[("alpha", b"a"), ("beta", b"b")],
                120_000,
            );
            let c = CoordinatorClient::new(channels[i / 100].clone());
            tasks.push(tokio::spawn(held_client(
                c,
                req,
                retrying,
                survivors.clone(),
            )));
        }
        let wait_until = Instant::now() + secs(30);
        loop {
            let view = leader_view(&cluster).await;
            if let Some((id, term, p)) = view {
                pending_before = p;
                if id != leader || term != term_before {
                    fill_failed = Some(format!(
                        "leadership moved during the fill without a kill: node {leader} term {term_before} -> node {id} term {term}, {p} pending"
                    ));
                    break;
                }
                if p as usize >= end {
                    break;
                }
            }
            if Instant::now() >= wait_until {
                fill_failed = Some(format!(
                    "only {pending_before} of {end} transactions pending after 30 s"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let fill = fill_start.elapsed();
    let term_after = cluster
        .statuses()
        .await
        .values()
        .map(|s| s.term)
        .max()
        .unwrap_or(0);
    let fill_elections = term_after.saturating_sub(term_before);
    let mut result = TakeoverResult {
        n,
        retrying_clients: retrying,
        fill_wave,
        fill,
        fill_elections,
        pending_before,
        killed: leader,
        winner: 0,
        elected: Duration::ZERO,
        lines: Vec::new(),
        first_line_at: None,
        resolved: None,
        final_leader: 0,
        clients_answered: None,
        client_outcomes: String::new(),
        alpha_aborted: 0,
        beta_aborted: 0,
        committed_anywhere: 0,
        note: String::new(),
    };
    if let Some(why) = fill_failed {
        progress(&format!("takeover N={n}: {why}; no kill in this run"));
        result.note = why;
        alpha.release_prepares();
        let _ = tokio::time::timeout(secs(30), cluster.wait_no_pending(secs(30))).await;
        for t in tasks {
            t.abort();
        }
        return result;
    }
    for id in cluster.ids() {
        cluster.wait_caught_up(id, secs(30)).await;
    }
    let offsets: Vec<(u64, u64)> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| (id, cluster.log_len(id)))
        .collect();
    progress(&format!(
        "takeover N={n}: {pending_before} pending after {:.0} ms; killing leader {leader}",
        ms(fill)
    ));
    let wall0 = wall_us();
    let t0 = Instant::now();
    cluster.kill(leader);
    alpha.release_prepares();
    let (winner, _term, elected) = wait_new_leader(&cluster, term_before, t0).await;
    result.winner = winner;
    result.elected = elected;
    // Until the pending index of the current leader is empty, polled every
    // 5 ms (after at least one takeover line, so it is the new term's view).
    let deadline = t0 + secs(120);
    let mut seen_line = false;
    while Instant::now() < deadline && result.resolved.is_none() {
        if !seen_line {
            seen_line = offsets
                .iter()
                .any(|(id, off)| !parse_takeover_lines(&cluster.log_since(*id, *off)).is_empty());
        }
        if seen_line && let Some((id, _, 0)) = leader_view(&cluster).await {
            result.resolved = Some(t0.elapsed());
            result.final_leader = id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (id, off) in &offsets {
        for l in parse_takeover_lines(&cluster.log_since(*id, *off)) {
            result.lines.push((*id, l));
        }
    }
    result.lines.sort_by_key(|(_, l)| l.at_us);
    result.first_line_at = result
        .lines
        .first()
        .map(|(_, l)| us_to_duration(l.at_us - wall0));
    let mut answered = Vec::new();
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        if let Ok(Ok(Some((at, outcome)))) = tokio::time::timeout(secs(90), t).await {
            answered.push(at.saturating_duration_since(t0));
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    if retrying {
        result.clients_answered = answered.iter().max().copied();
    }
    result.client_outcomes = outcomes
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    // The aborts reach the participants' records (bounded wait).
    let count = |p: &TestParticipant| {
        p.records()
            .iter()
            .filter(|(id, r)| id.starts_with("held-") && r.state.is_aborted())
            .count()
    };
    let _ = tokio::time::timeout(secs(10), async {
        while count(&alpha) < n || count(&beta) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    result.alpha_aborted = count(&alpha);
    result.beta_aborted = count(&beta);
    result.committed_anywhere = [&alpha, &beta]
        .iter()
        .map(|p| {
            p.records()
                .values()
                .filter(|r| r.state == dtc_tests::BranchState::Committed)
                .count()
        })
        .sum();
    let v = [alpha.violations(), beta.violations()].concat();
    if !v.is_empty() {
        progress(&format!("PROTOCOL VIOLATIONS: {v:?}"));
        result.note = format!("protocol violations: {v:?}");
    }
    result
}

async fn scenario_takeover(out: &mut Out, o: &Opts) {
    let mut runs = Vec::new();
    for (i, &n) in o.sizes.iter().enumerate() {
        runs.push((n, false, if i == 0 { o.floor_n } else { 0 }));
    }
    if let Some(&last) = o.sizes.last() {
        runs.push((last, true, 0));
    }
    let mut results = Vec::new();
    for (n, retrying, floor_n) in runs {
        let r = takeover_run(n, retrying, o.fill_wave, floor_n, out).await;
        progress(&format!(
            "takeover N={n}{}: leader after {:.0} ms, takeover lines {:?}, resolved {:?} {}",
            if retrying { " (retrying clients)" } else { "" },
            ms(r.elected),
            r.lines,
            r.resolved.map(ms),
            r.note
        ));
        results.push(r);
    }
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for r in &results {
        let opt = |d: Option<Duration>| d.map(|d| format!("{:.0}", ms(d))).unwrap_or("-".into());
        let first = r.lines.first().map(|(_, l)| *l);
        rows.push(vec![
            format!("{}{}", r.n, if r.retrying_clients { " +retry" } else { "" }),
            format!("{} ({} ms)", r.pending_before, ms(r.fill).round()),
            r.fill_elections.to_string(),
            format!("{}->{}", r.killed, r.winner),
            format!("{:.0}", ms(r.elected)),
            opt(r.first_line_at),
            first.map(|l| l.pending.to_string()).unwrap_or("-".into()),
            first
                .map(|l| format!("{:.1}", l.catch_up_ms))
                .unwrap_or("-".into()),
            first
                .map(|l| format!("{:.2}", l.scan_ms))
                .unwrap_or("-".into()),
            r.lines.len().to_string(),
            opt(r.resolved),
            opt(r.clients_answered),
            format!(
                "{}/{} {}/{} {}",
                r.alpha_aborted, r.n, r.beta_aborted, r.n, r.committed_anywhere
            ),
        ]);
        js.push(json!({
            "n": r.n,
            "retrying_clients": r.retrying_clients,
            "fill_wave": r.fill_wave,
            "pending_before_kill": r.pending_before,
            "fill_ms": ms(r.fill),
            "leader_changes_during_fill": r.fill_elections,
            "killed": r.killed,
            "new_leader": r.winner,
            "final_leader": r.final_leader,
            "elected_ms": ms(r.elected),
            "first_takeover_line_ms": r.first_line_at.map(ms),
            "takeover_lines": r.lines.iter().map(|(id, l)| json!({
                "node": id,
                "at_ms_after_kill": r.first_line_at.map(ms).unwrap_or(0.0)
                    + (l.at_us - r.lines[0].1.at_us) as f64 / 1e3,
                "pending": l.pending,
                "catch_up_ms": l.catch_up_ms,
                "scan_ms": l.scan_ms,
            })).collect::<Vec<_>>(),
            "pending_empty_ms": r.resolved.map(ms),
            "last_client_answered_ms": r.clients_answered.map(ms),
            "client_outcomes": r.client_outcomes,
            "alpha_aborted": r.alpha_aborted,
            "beta_aborted": r.beta_aborted,
            "committed_anywhere": r.committed_anywhere,
            "note": r.note,
        }));
    }
    out.table(
        &format!(
            "takeover: N transactions held in prepare, SIGKILL of the leader (ms from the SIGKILL; fill in waves of {})",
            if o.fill_wave == 0 {
                "N (all at once)".to_string()
            } else {
                o.fill_wave.to_string()
            }
        ),
        &[
            "N",
            "pending (fill)",
            "fill elections",
            "killed->new",
            "elected",
            "takeover line",
            "found",
            "catch-up ms",
            "scan ms",
            "takeovers",
            "pending empty",
            "last client",
            "aborted a/b, commits",
        ],
        &rows,
    );
    for r in &results {
        if r.lines.len() > 1 {
            let desc: Vec<String> = r
                .lines
                .iter()
                .map(|(id, l)| {
                    format!(
                        "node {id} +{:.0} ms found {} (catch-up {:.1} ms, scan {:.2} ms)",
                        (l.at_us - r.lines[0].1.at_us) as f64 / 1e3,
                        l.pending,
                        l.catch_up_ms,
                        l.scan_ms
                    )
                })
                .collect();
            out.say(&format!(
                "N={}{}: {} takeovers after the kill: {}",
                r.n,
                if r.retrying_clients { " +retry" } else { "" },
                r.lines.len(),
                desc.join("; ")
            ));
        }
        if !r.client_outcomes.is_empty() {
            out.say(&format!(
                "N={} retrying clients' answers: {}",
                r.n, r.client_outcomes
            ));
        }
        if !r.note.is_empty() {
            out.say(&format!("N={}: {}", r.n, r.note));
        }
    }
    out.put("takeover", Value::Array(js));
}

// ---------------------------------------------------------------------------

async fn run(o: Opts) -> Out {
    let mut out = Out {
        json: o.json,
        doc: serde_json::Map::new(),
    };
    let m = machine();
    out.say(&format!(
        "dtc-bench {} on {} (nproc {}, {}, kernel {}), load average {}\ndtc binary {} (sha256 {}), git {} with {} changed files",
        o.scenario,
        m["date_utc"].as_str().unwrap_or(""),
        m["nproc"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["loadavg"].as_str().unwrap_or(""),
        m["dtc_bin"].as_str().unwrap_or(""),
        &m["dtc_bin_sha256"].as_str().unwrap_or("")[..12.min(m["dtc_bin_sha256"].as_str().unwrap_or("").len())],
        m["git_head"].as_str().unwrap_or(""),
        m["git_dirty_files"]
    ));
    out.say(m["free_m"].as_str().unwrap_or(""));
    out.put("machine", m);
    out.put("scenario", json!(o.scenario));
    let s = o.scenario.clone();
    let all = s == "all";
    let mut loads = serde_json::Map::new();
    for name in ["floor", "latency", "ledger", "failover", "takeover"] {
        let chosen = all || s == name || (name == "latency" && s == "throughput");
        if !chosen {
            continue;
        }
        let before = loadavg();
        let t = Instant::now();
        match name {
            "floor" => scenario_floor(&mut out, &o).await,
            "latency" => scenario_latency(&mut out, &o).await,
            "ledger" => scenario_ledger(&mut out, &o).await,
            "failover" => scenario_failover(&mut out, &o).await,
            _ => scenario_takeover(&mut out, &o).await,
        }
        let after = loadavg();
        out.say(&format!(
            "({name}: {:.0} s; load average before {before}, after {after})",
            t.elapsed().as_secs_f64()
        ));
        loads.insert(
            name.to_string(),
            json!({"seconds": t.elapsed().as_secs_f64(), "loadavg_before": before, "loadavg_after": after}),
        );
    }
    out.put("runs", Value::Object(loads));
    out
}

fn main() -> std::process::ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dtc-bench: {e}\n\n{HELP}");
            return std::process::ExitCode::from(2);
        }
    };
    // Fail early, with instructions, if the binary is missing.
    let _: PathBuf = dtc_tests::dtc_bin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let limit = secs(o.max_secs);
    let json = o.json;
    let started = Instant::now();
    let result = rt.block_on(async move { tokio::time::timeout(limit, run(o)).await });
    match result {
        Ok(out) => {
            out.say(&format!(
                "\ntotal run time {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Object(out.doc)).expect("json")
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(_) => {
            eprintln!("dtc-bench: the run did not finish within {limit:?}; stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
