//! Long sessions: a session that has taken a thousand snapshots must still see every file
//! and must not get slower (layer chains are flattened before they cost anything).

use std::time::{Duration, Instant};

use crate::harness::Env;

const RUNS: usize = 1000;
const SAMPLE: usize = 20;

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / samples.len() as u32
}

#[test]
#[ignore = "takes minutes; run with cargo test --test cli -- --ignored thousand"]
fn thousand_runs_in_one_session() {
    let env = Env::host();
    let mut times = Vec::with_capacity(RUNS);
    for i in 1..=RUNS {
        let script = format!("mkdir -p /data && echo {i} > /data/f{i}");
        let started = Instant::now();
        env.run(["run", "--", "sh", "-c", &script]).success();
        times.push(started.elapsed());
    }
    env.run([
        "run", "--", "sh", "-c",
        "for i in $(seq 1 1000); do test -e /data/f$i || echo \"missing f$i\"; done; ls /data | wc -l",
    ])
    .success()
    .stdout("1000\n");
    env.run(["run", "--", "cat", "/data/f1", "/data/f500", "/data/f1000"])
        .success()
        .stdout("1\n500\n1000\n");

    let early = mean(&times[..SAMPLE]);
    let late = mean(&times[RUNS - SAMPLE..]);
    eprintln!(
        "runs 1-{SAMPLE}: {early:?} on average; runs {}-{RUNS}: {late:?}",
        RUNS - SAMPLE + 1
    );
    let allowed = early.mul_f64(1.2) + Duration::from_millis(5);
    assert!(
        late <= allowed,
        "run {RUNS} is slower than run 1: late average {late:?} > 1.2 × {early:?} + 5 ms"
    );
}
