//! `dtc cluster add | remove | replace`: membership changes through the
//! coordinators' `CoordinatorAdmin` service (any node forwards to the
//! leader). Prints each step the leader took, one per line.
//!
//! Exit codes: 0 done; 1 stopped at a safe point (the node is a learner
//! still catching up: run the same command again); 2 refused or bad input
//! (one line on stderr saying why); 3 unavailable.

use crate::client_cmds::{ClusterArgs, client, fail, usage};
use dtc_client::proto as pb;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Add a new coordinator, started empty with `--join`: it becomes a
    /// learner, catches up, then a voter (joint consensus).
    Add {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        node: NodeArgs,
        /// Longest wait for the new node to catch up before it is promoted.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        catch_up_secs: u64,
    },
    /// Remove a coordinator (refused if it would leave no voter or lose
    /// the quorum). Stop its process afterwards.
    Remove {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Bring back a coordinator that lost its disk: start it empty with
    /// `--join` (same id, same or new address), then run this. The old
    /// voter is removed, the empty node added as a learner, caught up by
    /// snapshot, and promoted to voter.
    Replace {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        node: NodeArgs,
        /// Longest wait for the node to catch up before it is promoted.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        catch_up_secs: u64,
    },
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's id.
    #[arg(long)]
    id: u64,
    /// The node's address as peers and clients dial it (its --advertise).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    addr: String,
}

fn parse_addr(s: &str) -> anyhow::Result<String> {
    let peers = dtc_coordinator::parse_peers(&format!("0={s}"))
        .map_err(|_| anyhow::anyhow!("{s:?} is not HOST:PORT"))?;
    match peers.get(&0) {
        Some(a) if peers.len() == 1 && !a.contains('=') => Ok(a.clone()),
        _ => anyhow::bail!("{s:?} is not HOST:PORT"),
    }
}

pub async fn run(cmd: ClusterCmd) -> ExitCode {
    let (name, args) = match &cmd {
        ClusterCmd::Add { cluster, .. } => ("cluster add", cluster),
        ClusterCmd::Remove { cluster, .. } => ("cluster remove", cluster),
        ClusterCmd::Replace { cluster, .. } => ("cluster replace", cluster),
    };
    let c = match client(name, args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let r = match &cmd {
        ClusterCmd::Add {
            node,
            catch_up_secs,
            ..
        } => {
            if *catch_up_secs == 0 || *catch_up_secs > 600 {
                return usage(name, "--catch-up-secs must be 1..=600");
            }
            with_progress(
                &node.addr,
                c.config().tls.as_ref(),
                c.add_member(node.id, &node.addr, Duration::from_secs(*catch_up_secs)),
            )
            .await
        }
        ClusterCmd::Remove { id, .. } => c.remove_member(*id).await,
        ClusterCmd::Replace {
            node,
            catch_up_secs,
            ..
        } => {
            if *catch_up_secs == 0 || *catch_up_secs > 600 {
                return usage(name, "--catch-up-secs must be 1..=600");
            }
            with_progress(
                &node.addr,
                c.config().tls.as_ref(),
                c.replace_member(node.id, &node.addr, Duration::from_secs(*catch_up_secs)),
            )
            .await
        }
    };
    match r {
        Ok(resp) => print(args.json, &resp),
        // An unknown id is bad input here, like any refusal (exit 1 means
        // "not finished, run again").
        Err(e @ dtc_client::ClientError::NotFound(_)) => {
            let _ = fail(name, args.json, &e);
            ExitCode::from(2)
        }
        Err(e) => fail(name, args.json, &e),
    }
}

/// Runs `call`, and while it runs (after a first quiet stretch) prints to
/// stderr every few seconds how far the node at `addr` has got, as it says
/// itself; the leader's answer lists the steps once the change is done.
/// The node may not be reachable from here (a container's host name):
/// then the line says only how long the change has taken.
async fn with_progress<T>(
    addr: &str,
    tls: Option<&dtc_client::Tls>,
    call: impl std::future::Future<Output = T>,
) -> T {
    let started = std::time::Instant::now();
    let mut call = std::pin::pin!(call);
    loop {
        let report = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let secs = started.elapsed().as_secs();
            match dtc_harness::status::ask(addr, Duration::from_secs(1), tls).await {
                Ok(s) => {
                    let state = if s.awaiting_admission {
                        "waiting to be added"
                    } else {
                        s.role.as_str()
                    };
                    eprintln!(
                        "... {secs} s: node {} at {addr} is {state}, applied index {}",
                        s.node_id, s.last_applied
                    );
                }
                Err(_) => eprintln!("... {secs} s: the change is still running"),
            }
        };
        tokio::select! {
            r = &mut call => return r,
            () = report => {}
        }
    }
}

fn print(json_out: bool, r: &pb::MembershipChangeResponse) -> ExitCode {
    if json_out {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
            .collect();
        println!(
            "{}",
            json!({"done": r.done, "steps": r.steps, "members": members})
        );
    } else {
        for s in &r.steps {
            println!("{s}");
        }
        let list = |voter: bool| {
            r.members
                .iter()
                .filter(|m| m.voter == voter)
                .map(|m| format!("{}={}", m.id, m.addr))
                .collect::<Vec<_>>()
                .join(",")
        };
        let learners = list(false);
        if learners.is_empty() {
            println!("voters: {}", list(true));
        } else {
            println!("voters: {}  learners: {learners}", list(true));
        }
    }
    if r.done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
