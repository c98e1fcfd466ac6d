//! Compiles `proto/dtc/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine builds with cargo alone.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded here.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // `set_var` is unsafe in edition 2024 because of other threads; a
        // build script has none, but we pass the path explicitly instead.
        let out = PathBuf::from(env::var("OUT_DIR")?);
        compile(Some(protoc), &out)?;
    } else {
        let out = PathBuf::from(env::var("OUT_DIR")?);
        compile(None, &out)?;
    }
    Ok(())
}

fn compile(
    protoc: Option<PathBuf>,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "coordinator.proto",
        "participant.proto",
        "raft.proto",
        "ledger.proto",
    ]
    .map(|f| root.join("dtc/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = tonic_prost_build::Config::new();
    if let Some(p) = protoc {
        config.protoc_executable(p);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("dtc_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
