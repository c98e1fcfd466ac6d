//! Runs one seed and prints its summary: `cargo run -p dtc-sim --example one -- SEED [calm] [window_ms]`.
fn main() {
    dtc_sim::init_logging();
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut o = dtc_sim::Options::seed(seed);
    o.calm = args.iter().any(|a| a == "calm");
    if let Some(ms) = args.get(3).and_then(|s| s.parse().ok()) {
        o.fault_window = std::time::Duration::from_millis(ms);
    }
    let t = std::time::Instant::now();
    match dtc_sim::run(&o) {
        Ok(r) => {
            println!("{} in {:?}", r.summary(), t.elapsed());
            if args.iter().any(|a| a == "faults") {
                for f in &r.faults {
                    println!("  {f}");
                }
            }
        }
        Err(e) => println!("ERROR {e} in {:?}", t.elapsed()),
    }
}
