//! The deployment files, parsed: deploy/k8s/*.yaml (never applied to a
//! cluster here, so this is what checks them) and deploy/compose.yaml (run
//! for real by tests/tests/docker.rs; checked here for what a run does not
//! show, such as ports published beyond 127.0.0.1). Every `DTC_*` variable
//! they set must be one that `dtc coordinator` or `dtc participant` reads.

use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

/// Every document of every .yaml file under deploy/k8s, with its file name.
fn k8s_documents() -> Vec<(String, Value)> {
    let dir = deploy_dir().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v = <Value as serde::Deserialize>::deserialize(de)
                .unwrap_or_else(|e| panic!("{name}, document {i}: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", get(v, path)))
}

fn u(v: &Value, path: &str) -> u64 {
    get(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number: {:?}", get(v, path)))
}

/// `a.b.0.c`: map keys and sequence indexes; Null when absent.
fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_sequence() => v.get(i).unwrap_or(&NULL),
            _ => v.get(key).unwrap_or(&NULL),
        })
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"].as_str() == Some(kind) && get(d, "metadata.name").as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// A container's environment as name -> plain value ("" for valueFrom).
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .expect("container env")
        .iter()
        .map(|e| {
            (
                s(e, "name").to_string(),
                e["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("selector is a map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The `DTC_*` variables the binary reads: clap lists them in --help as
/// `[env: NAME=]`.
fn variables_read_by(subcommand: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(dtc_tests::dtc_bin())
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

fn grpc_probe_port(container: &Value, probe: &str) -> u64 {
    let p = &container[probe];
    assert!(!p.is_null(), "{} has no {probe}", s(container, "name"));
    u(p, "grpc.port")
}

#[test]
fn kubernetes_manifests_describe_three_coordinators_that_find_each_other() {
    let docs = k8s_documents();
    for (file, d) in &docs {
        for field in ["apiVersion", "kind", "metadata.name"] {
            assert!(
                get(d, field).as_str().is_some(),
                "{file}: a document without {field}"
            );
        }
    }

    let sts = find(&docs, "StatefulSet", "dtc-coord");
    assert_eq!(u(sts, "spec.replicas"), 3);
    assert_eq!(s(sts, "spec.podManagementPolicy"), "Parallel");
    let first = u(sts, "spec.ordinals.start");
    let pod_labels = get(sts, "spec.template.metadata.labels");
    assert!(labels_match(
        get(sts, "spec.selector.matchLabels"),
        pod_labels
    ));

    // The headless Service the pods' DNS names hang off.
    let svc_name = s(sts, "spec.serviceName");
    let svc = find(&docs, "Service", svc_name);
    assert_eq!(
        s(svc, "spec.clusterIP"),
        "None",
        "{svc_name} must be headless"
    );
    assert_eq!(
        get(svc, "spec.publishNotReadyAddresses").as_bool(),
        Some(true)
    );
    assert!(labels_match(get(svc, "spec.selector"), pod_labels));
    let port = u(svc, "spec.ports.0.port");

    let c = get(sts, "spec.template.spec.containers.0");
    assert_eq!(s(c, "args.0"), "coordinator");
    assert_eq!(u(c, "ports.0.containerPort"), port);
    assert_eq!(grpc_probe_port(c, "readinessProbe"), port);
    assert_eq!(grpc_probe_port(c, "livenessProbe"), port);
    // Ready = can serve clients (a leader with a quorum is known); alive =
    // the process answers. A restart would not bring a lost quorum back.
    assert_eq!(s(c, "readinessProbe.grpc.service"), "dtc.v1.Coordinator");
    assert!(get(c, "livenessProbe.grpc.service").is_null());
    for r in ["cpu", "memory"] {
        assert!(
            get(c, &format!("resources.requests.{r}"))
                .as_str()
                .is_some(),
            "request {r}"
        );
    }
    let security = get(sts, "spec.template.spec.securityContext");
    assert_eq!(get(security, "runAsNonRoot").as_bool(), Some(true));
    assert_eq!(u(security, "runAsUser"), 10001, "the image's user");

    // Ids from the pod index; peers = every pod's stable name on the
    // Service, ids first..first+replicas; this pod advertises its own.
    let env = env_of(c);
    let id_from = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("DTC_ID"))
        .expect("DTC_ID");
    assert_eq!(
        s(id_from, "valueFrom.fieldRef.fieldPath"),
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    let sts_name = s(sts, "metadata.name");
    let peers = dtc_coordinator::parse_peers(&env["DTC_PEERS"]).expect("DTC_PEERS parses");
    let expected: BTreeMap<u64, String> = (first..first + 3)
        .map(|id| (id, format!("{sts_name}-{id}.{svc_name}:{port}")))
        .collect();
    assert_eq!(peers, expected);
    assert_eq!(
        env["DTC_ADVERTISE"],
        format!("$(POD_NAME).{svc_name}:{port}")
    );
    assert_eq!(env["DTC_LISTEN"], format!("0.0.0.0:{port}"));

    // Each pod's data on its own claim, mounted where DTC_DATA_DIR points.
    let claim = get(sts, "spec.volumeClaimTemplates.0");
    let claim_name = s(claim, "metadata.name");
    assert_eq!(s(claim, "spec.accessModes.0"), "ReadWriteOnce");
    assert!(
        get(claim, "spec.resources.requests.storage")
            .as_str()
            .is_some()
    );
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some(claim_name))
        .expect("the claim is mounted");
    assert_eq!(s(mount, "mountPath"), env["DTC_DATA_DIR"]);

    // At most one coordinator down by choice: two of three keep a quorum.
    let pdb = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some("PodDisruptionBudget"))
        .expect("a PodDisruptionBudget");
    assert_eq!(u(pdb, "spec.maxUnavailable"), 1);
    assert!(labels_match(
        get(pdb, "spec.selector.matchLabels"),
        pod_labels
    ));

    // The sample ledger: one pod on its own claim, calling the coordinators
    // at their peer addresses and registering its Service's name.
    let ledger = find(&docs, "Deployment", "ledger-a");
    assert_eq!(u(ledger, "spec.replicas"), 1);
    assert_eq!(s(ledger, "spec.strategy.type"), "Recreate");
    let lc = get(ledger, "spec.template.spec.containers.0");
    assert_eq!(s(lc, "args.0"), "participant");
    let lenv = env_of(lc);
    let lport = u(lc, "ports.0.containerPort");
    assert_eq!(grpc_probe_port(lc, "readinessProbe"), lport);
    assert_eq!(grpc_probe_port(lc, "livenessProbe"), lport);
    let lsvc = find(&docs, "Service", &lenv["DTC_NAME"]);
    assert_eq!(
        lenv["DTC_ADVERTISE"],
        format!("{}:{}", lenv["DTC_NAME"], u(lsvc, "spec.ports.0.port"))
    );
    assert!(labels_match(
        get(lsvc, "spec.selector"),
        get(ledger, "spec.template.metadata.labels")
    ));
    let coordinators: BTreeSet<&str> = lenv["DTC_COORDINATORS"].split(',').collect();
    assert_eq!(
        coordinators,
        expected.values().map(String::as_str).collect()
    );
    let claim = s(
        ledger,
        "spec.template.spec.volumes.0.persistentVolumeClaim.claimName",
    );
    find(&docs, "PersistentVolumeClaim", claim);

    // Every variable set is one the binary reads.
    let known: BTreeSet<String> = variables_read_by("coordinator")
        .into_iter()
        .chain(variables_read_by("participant"))
        .collect();
    for name in env
        .keys()
        .chain(lenv.keys())
        .filter(|n| n.starts_with("DTC_"))
    {
        assert!(
            known.contains(name),
            "{name} is read by no dtc flag (known: {known:?})"
        );
    }
}

#[test]
fn compose_file_publishes_only_on_loopback_and_peers_match_the_services() {
    let text = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).unwrap();
    v.apply_merge().unwrap();
    let services = v["services"].as_mapping().expect("services");
    let volumes = v["volumes"].as_mapping().expect("named volumes");
    let known: BTreeSet<String> = variables_read_by("coordinator")
        .into_iter()
        .chain(variables_read_by("participant"))
        .collect();
    let mut coordinators = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert_eq!(s(svc, "restart"), "unless-stopped", "{name}");
        assert_eq!(s(svc, "hostname"), name);
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().unwrap().to_string(),
                )
            })
            .collect();
        for k in env.keys() {
            assert!(known.contains(k), "{name}: {k} is read by no dtc flag");
        }
        let port = env["DTC_LISTEN"].rsplit(':').next().unwrap().to_string();
        let test: Vec<&str> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            test[..4],
            ["CMD", "/usr/local/bin/dtc", "health", "--addr"],
            "{name}"
        );
        assert_eq!(test[4], format!("127.0.0.1:{port}"), "{name}");
        if s(svc, "command.0") == "coordinator" {
            // healthy = knows a leader with a quorum, not just "process up".
            assert_eq!(test[5..7], ["--service", "dtc.v1.Coordinator"], "{name}");
        }
        assert_eq!(env["DTC_ADVERTISE"], format!("{name}:{port}"));
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p:?} beyond loopback"
            );
        }
        for m in svc["volumes"].as_sequence().unwrap() {
            let vol = m.as_str().unwrap().split(':').next().unwrap();
            assert!(
                volumes.contains_key(vol),
                "{name}: volume {vol} is not a named volume"
            );
        }
        match s(svc, "command.0") {
            "coordinator" => {
                let id: u64 = env["DTC_ID"].parse().unwrap();
                coordinators.insert(id, (name.to_string(), env));
            }
            "participant" => {
                let listed: BTreeSet<String> = env["DTC_COORDINATORS"]
                    .split(',')
                    .map(String::from)
                    .collect();
                let expected: BTreeSet<String> = services
                    .iter()
                    .filter(|(_, svc)| svc["command"][0].as_str() == Some("coordinator"))
                    .map(|(n, svc)| {
                        let port = s(svc, "environment.DTC_LISTEN").rsplit(':').next().unwrap();
                        format!("{}:{port}", n.as_str().unwrap())
                    })
                    .collect();
                assert_eq!(listed, expected, "{name}: DTC_COORDINATORS");
            }
            other => panic!("{name}: unexpected command {other}"),
        }
    }
    assert_eq!(coordinators.len(), 3);
    for (id, (name, env)) in &coordinators {
        let peers = dtc_coordinator::parse_peers(&env["DTC_PEERS"]).unwrap();
        let expected: BTreeMap<u64, String> = coordinators
            .iter()
            .map(|(id, (n, e))| {
                (
                    *id,
                    format!("{n}:{}", e["DTC_LISTEN"].rsplit(':').next().unwrap()),
                )
            })
            .collect();
        assert_eq!(peers, expected, "{name}'s DTC_PEERS");
        assert_eq!(peers[id], env["DTC_ADVERTISE"]);
    }
}
