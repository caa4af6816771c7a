//! `contree exec` and the API's subprocesses: more commands in a running operation's
//! sandbox, locally and through `serve`, each with its own spid, output and exit code, and
//! with exactly the containment of the main command.

use crate::harness::{wait_until, Env};
use crate::serve::{our_client, Server, TOKEN_A, TOKEN_B};
use serde_json::{json, Value};
use std::time::Duration;

/// What the kernel says of a process's privileges: the same for the main command and an
/// exec'd one, or the exec'd one escaped some of the hardening.
const PRIVILEGES: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; cat /proc/self/cgroup; readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/net /proc/self/ns/user; hostname";

/// A detached run that writes what it is, then waits; its uuid once its command runs.
fn detached_sandbox(env: &Env) -> String {
    let main = format!("{{ {PRIVILEGES}; }} > /tmp/main.txt; touch /tmp/ready; sleep 60");
    let op = env.json(["run", "-d", "--", "sh", "-c", &main])["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    // Until its command runs, an exec is refused (the operation has not started yet).
    wait_until(Duration::from_secs(30), "the detached run is ready", || {
        env.run(["exec", &op, "--", "test", "-e", "/tmp/ready"])
            .status
            .success()
    });
    op
}

fn exec_in_a_detached_run(env: &Env) {
    let op = detached_sandbox(env);
    // The same sandbox: the main command's files, namespaces, cgroup, privileges, hostname.
    let main = env
        .run(["exec", &op, "--", "cat", "/tmp/main.txt"])
        .success()
        .stdout_text();
    assert!(main.contains("Seccomp:"), "{main}");
    env.run(["exec", &op, "-s", "--", PRIVILEGES])
        .success()
        .stdout(&main);
    // Stdin, stderr, the environment, the cwd and the exit code are its own.
    env.cmd(["exec", &op, "-e", "WHO=exec", "-w", "/srv", "-s", "--"])
        .arg("cat; echo \"$WHO in $(pwd)\" >&2; exit 7")
        .stdin("from stdin\n")
        .output()
        .code(7)
        .stdout("from stdin\n")
        .stderr_contains("exec in /srv");
    // A program that does not exist is said at once, as an error.
    env.run(["exec", &op, "--", "/no/such/program"])
        .code(1)
        .stderr_contains("cannot run /no/such/program");
    // Each exec has its spid in the operation's events.
    let events = env
        .run(["-o", "json", "op", "events", &op])
        .success()
        .json_lines();
    let spawned: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "spawn")
        .filter_map(|e| e["spid"].as_u64())
        .collect();
    assert!(spawned.len() >= 4 && spawned.contains(&1), "{spawned:?}");
    assert!(
        spawned.iter().filter(|s| **s >= 2).count() >= 3,
        "{spawned:?}"
    );
    // Once the operation is over, nothing more runs in it.
    env.run(["kill", &op]).success();
    // (A cancelled operation's wait exits 1.)
    env.run(["wait", &op]).code(1).stdout_contains("CANCELLED");
    env.run(["exec", &op, "--", "true"])
        .code(1)
        .stderr_contains("has ended");
}

#[test]
fn exec_runs_in_the_sandbox_of_a_detached_run() {
    exec_in_a_detached_run(&Env::host());
}

#[test]
fn exec_runs_in_the_sandbox_of_a_detached_run_through_serve() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    exec_in_a_detached_run(&env);
}

/// The API's side: `POST …/subprocesses` and what `GET …/subprocesses/{spid}`, the events
/// filtered by spid and a signal to one subprocess give; a subprocess still running when
/// the main command ends is killed with the sandbox, and its end recorded.
#[test]
fn subprocesses_through_the_api() {
    let server = Server::start();
    let image = server.host_image(TOKEN_A);
    let body = json!({"image": image, "command": "sleep 4", "shell": true, "disposable": true});
    let reply = server.post_json("/v1/instances", TOKEN_A, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let path = format!("/v1/operations/{op}/subprocesses");
    let exec = |body: Value| server.post_json(&path, TOKEN_A, &body);
    let mut first = exec(json!({"command": "echo hi; exit 3", "shell": true}));
    wait_until(Duration::from_secs(30), "the operation runs", || {
        if first.status == 425 || first.status == 409 {
            first = exec(json!({"command": "echo hi; exit 3", "shell": true}));
        }
        first.status == 201
    });
    let spid = first.json()["spid"].as_u64().unwrap();
    assert!(spid >= 2);
    assert_eq!(
        first.header("location"),
        Some(format!("{path}/{spid}").as_str())
    );
    let result = |spid: u64| server.get(&format!("{path}/{spid}"), TOKEN_A);
    wait_until(Duration::from_secs(10), "the subprocess ended", || {
        result(spid).json()["state"]["exit_code"] == 3
    });
    let done = result(spid).json();
    assert_eq!(done["stdout"]["value"], "hi\n", "{done}");
    assert_eq!(done["state"]["signal"], -1, "{done}");
    assert_eq!(done["resources"].as_object().unwrap().len(), 16, "{done}");

    // A signal to one subprocess ends it, not the operation.
    let sleeper = exec(json!({"command": "sleep", "args": ["30"]}));
    assert_eq!(sleeper.status, 201, "{}", sleeper.text());
    let sleeper = sleeper.json()["spid"].as_u64().unwrap();
    let reply = server.request(
        "DELETE",
        &format!("{path}/{sleeper}?signal=TERM"),
        Some(TOKEN_A),
        b"",
    );
    assert_eq!(reply.status, 204, "{}", reply.text());
    wait_until(Duration::from_secs(10), "the sleeper ended", || {
        result(sleeper).json()["state"]["signal"] == 15
    });
    // One left running: killed when the main command ends.
    let left = exec(json!({"command": "sleep 60", "shell": true}));
    let left = left.json()["spid"].as_u64().unwrap();

    // Refused: what the instance owns, another namespace, a spid that never was.
    assert_eq!(exec(json!({"command": "true", "image": "x"})).status, 400);
    let theirs = server.post_json(&path, TOKEN_B, &json!({"command": "true"}));
    assert_eq!(theirs.status, 404, "{}", theirs.text());
    assert_eq!(result(99).status, 404);
    let events = server.events(&op, TOKEN_A, None);
    let killed = events
        .iter()
        .find(|e| e["type"] == "exit" && e["spid"] == left)
        .expect("the left one's exit");
    assert_eq!(killed["data"]["signal"], 9, "{killed}");
    // Filtered by spid: that process's events only.
    let url = format!("/v1/operations/{op}/events?spid={spid}");
    let only = server.get(&url, TOKEN_A).text();
    let kinds: Vec<Value> = only
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect();
    assert!(!kinds.is_empty());
    assert!(kinds.iter().all(|e| e["spid"] == spid), "{only}");
    // Over: 409.
    let late = exec(json!({"command": "true"}));
    assert_eq!(late.status, 409, "{}", late.text());
}
