//! `--config FILE` for `dtc coordinator` and `dtc participant`: a TOML file
//! whose keys are the subcommand's long flags (`data-dir = "/var/lib/dtc"`,
//! `peers = ["1=coord-1:7000", "2=coord-2:7000"]`, `json = true`).
//!
//! Before clap parses anything, each key becomes the flag it names, placed
//! ahead of the command line's own arguments, unless the command line gives
//! that flag or its `DTC_*` variable is set. So the precedence is: flag,
//! then environment, then file, then default, and every value goes through
//! the same parser and checks as the flag would. An unknown key, a nested
//! table or an unreadable file is an error naming it.

use clap::{ArgAction, Command};
use std::ffi::OsString;
use std::path::PathBuf;

/// The subcommands that take `--config`.
const WITH_CONFIG: [&str; 2] = ["coordinator", "participant"];

/// The variable `--config` falls back to.
pub const CONFIG_VAR: &str = "DTC_CONFIG";

/// `argv` with the configuration file's settings inserted after the
/// subcommand, or why the file cannot be used.
pub fn expand(argv: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, String> {
    let Some(sub_name) = argv.get(1).and_then(|s| s.to_str()) else {
        return Ok(argv);
    };
    if !WITH_CONFIG.contains(&sub_name) {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv[2..]) else {
        return Ok(argv);
    };
    let Some(sub) = cli.find_subcommand(sub_name) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let given: Vec<String> = argv[2..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut inserted: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                format!(
                    "{}: unknown key {key:?}: the keys are the long flags of `dtc {sub_name}` \
                     (see dtc {sub_name} --help)",
                    path.display()
                )
            })?;
        let from_env = arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
        if given.contains(&key) || from_env {
            continue;
        }
        let flag = format!("--{key}");
        let bad = |what: &str| format!("{}: key {key:?}: {what}", path.display());
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => inserted.push(flag.into()),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(bad("expected true or false")),
            (_, toml::Value::Table(_)) => return Err(bad("a table is not a flag's value")),
            (_, toml::Value::Array(items)) => {
                let items = items
                    .into_iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("a list holds strings, numbers or booleans"))?;
                inserted.push(flag.into());
                inserted.push(items.join(",").into());
            }
            (_, v) => {
                let v = scalar(v).ok_or_else(|| bad("unsupported value"))?;
                inserted.push(flag.into());
                inserted.push(v.into());
            }
        }
    }
    let mut out = argv[..2].to_vec();
    out.extend(inserted);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

fn scalar(v: toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `--config FILE` / `--config=FILE` among the subcommand's arguments, or
/// `DTC_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(CONFIG_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
