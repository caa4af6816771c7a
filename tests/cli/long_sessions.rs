//! Long sessions: a session that has taken a thousand snapshots still sees every file, and
//! its layer chain stays short (flattened) instead of growing towards the kernel's limit.
//! How fast the thousandth run is compared with the first is a benchmark
//! (`benches/run.sh`), not an assertion here: timings on a shared machine are not a test.

use crate::harness::Env;

const RUNS: usize = 1000;

#[test]
// Ignored by default for its length; .ci/run runs it, and so does
// `cargo test --test cli -- --ignored thousand`.
#[ignore = "takes about a minute; run with cargo test --test cli -- --ignored thousand"]
fn thousand_runs_in_one_session() {
    let env = Env::host();
    for i in 1..=RUNS {
        let script = format!(
            "mkdir -p /data && echo {i} > /data/f{i} && rm -f /data/gone && touch /data/gone"
        );
        env.run(["run", "--", "sh", "-c", &script]).success();
    }
    env.run([
        "run", "--", "sh", "-c",
        "for i in $(seq 1 1000); do test -e /data/f$i || echo \"missing f$i\"; done; ls /data | wc -l",
    ])
    .success()
    .stdout("1001\n");
    env.run(["run", "--", "cat", "/data/f1", "/data/f500", "/data/f1000"])
        .success()
        .stdout("1\n500\n1000\n");
    // Every run wrote a layer; flattening must have kept the chain far below 1000.
    let db = rusqlite_layers(&env);
    assert!(
        db <= 32,
        "the session's image has {db} layers after {RUNS} runs"
    );
}

/// The number of layers of the session's current image, read from the store.
fn rusqlite_layers(env: &Env) -> usize {
    let image = env.json(["use"])["current_image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let db =
        rusqlite::Connection::open(env.home().join("store/contree.db")).expect("store db opens");
    let layers: String = db
        .query_row("SELECT layers FROM images WHERE uuid = ?1", [&image], |r| {
            r.get(0)
        })
        .expect("the session's image is in the store");
    serde_json::from_str::<Vec<String>>(&layers)
        .expect("layers are a JSON list")
        .len()
}
