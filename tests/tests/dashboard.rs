//! The Grafana dashboard in deploy/grafana queries only metrics that the
//! coordinator and the participant register (a renamed metric must not
//! leave a silently empty panel behind), and every panel has a query.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `dtc_<name>` for every `register("<name>", ...)` in the metrics modules.
fn registered_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "crates/dtc-coordinator/src/metrics.rs",
        "crates/dtc-participant/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".register(") {
            rest = &rest[i + ".register(".len()..];
            let Some(start) = rest.find('"') else { break };
            let name: String = rest[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(format!("dtc_{name}"));
        }
    }
    names
}

/// The metric names a PromQL expression uses (`dtc_...`), without the
/// suffixes the exposition format adds to counters and histograms.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("dtc_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.push(base.to_string());
    }
    out
}

#[test]
fn every_dashboard_query_names_a_registered_metric() {
    let registered = registered_metrics();
    assert!(
        registered.contains("dtc_transactions") && registered.contains("dtc_in_doubt_transactions"),
        "the scan of the metrics modules found {registered:?}"
    );
    let text = std::fs::read_to_string(root().join("deploy/grafana/dtc-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            let names = metrics_in(expr);
            assert!(
                !names.is_empty(),
                "panel {title:?}: {expr:?} names no dtc metric"
            );
            for name in names {
                assert!(
                    registered.contains(&name),
                    "panel {title:?} queries {name}, which no node registers"
                );
                used.insert(name);
            }
        }
    }
    // The metrics an operator needs most are on it.
    for needed in [
        "dtc_transactions",
        "dtc_pending_transactions",
        "dtc_in_doubt_transactions",
        "dtc_is_leader",
        "dtc_last_takeover_seconds",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}
