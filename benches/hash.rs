//! Throughput of `contree::attach::sha256_file`, the hasher behind attachments.
//!
//! Run by `benches/run.sh`, which creates the input and compares against
//! `openssl dgst -sha256` on the same file. Standalone:
//!
//! ```sh
//! head -c 1G /dev/urandom > /var/tmp/big && cat /var/tmp/big > /dev/null
//! CONTREE_BENCH_FILE=/var/tmp/big cargo bench --bench hash
//! ```
//!
//! Prints one line per pass and a final `RESULT` line that `run.sh` parses.
//! MB means 10^6 bytes. No assertions: the figure is compared against a baseline
//! measured in the same invocation of `run.sh`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const PASSES: usize = 3;

fn main() -> ExitCode {
    // cargo passes `--bench` (and any filter); there is nothing to filter here.
    let Some(path) = std::env::var_os("CONTREE_BENCH_FILE").map(PathBuf::from) else {
        eprintln!("hash bench: set CONTREE_BENCH_FILE to the file to hash (benches/run.sh does)");
        return ExitCode::from(2);
    };
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) => {
            eprintln!("hash bench: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };

    let mut best = f64::INFINITY;
    let mut digest = String::new();
    for pass in 1..=PASSES {
        let start = Instant::now();
        match contree::attach::sha256_file(&path) {
            Ok(d) => digest = d,
            Err(e) => {
                eprintln!("hash bench: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        println!(
            "pass {pass}: {:.3} s, {:.1} MB/s",
            secs,
            len as f64 / secs / 1e6
        );
    }
    let mbps = len as f64 / best / 1e6;
    println!("best of {PASSES}: {best:.3} s, {mbps:.1} MB/s over {len} bytes");
    println!("RESULT sha256_file bytes={len} best_s={best:.6} mbps={mbps:.1} digest={digest}");
    ExitCode::SUCCESS
}
