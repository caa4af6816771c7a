//! The official Python SDK (`contree-sdk==0.3.6`, in the venv `.ci/run` makes at
//! target/official-sdk) against `contree serve`: the paths programs and agents take, sync and
//! async. Each test is a Python script that drives the SDK and checks what a user of it would
//! (`check` exits 1 naming what differs); the Rust side checks what the server recorded.

use crate::harness::{Env, Output};
use crate::serve::{Server, TOKEN_A};
use crate::skip::skip;
use serde_json::Value;
use std::path::PathBuf;

/// The SDK's venv (`CONTREE_SDK_PYTHON` overrides).
fn sdk_python() -> Option<PathBuf> {
    let path = std::env::var_os("CONTREE_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/official-sdk/bin/python")
        });
    path.exists().then_some(path)
}

/// What every script starts with: the SDK's clients, configured from the environment
/// (`JWTAuth` reads CONTREE_TOKEN and CONTREE_BASE_URL), and `check`.
const PRELUDE: &str = r#"
import asyncio, os, pathlib, sys
from contree_sdk import Contree, ContreeSync
from contree_sdk.auth import JWTAuth
from contree_sdk.config import ContreeConfig

WORK = pathlib.Path(os.environ["WORK"])

def config():
    return ContreeConfig(auth=JWTAuth(), operation_poll_secs_max=0.2)

def check(what, got, want):
    if got != want:
        print(f"FAIL {what}: got {got!r}, want {want!r}", flush=True)
        sys.exit(1)
    print(f"ok {what}", flush=True)
"#;

/// Runs `script` (after `PRELUDE`) with the SDK, as alice on `server`; `None` where the
/// venv is missing (the skip said so).
pub(crate) fn run_script(server: &Server, script: &str) -> Option<Output> {
    let Some(python) = sdk_python() else {
        skip("the official SDK's venv is missing (bash .ci/run creates target/official-sdk)");
        return None;
    };
    let env = Env::new();
    let file = env.write("script.py", format!("{PRELUDE}\n{script}"));
    let work = env.work().to_string_lossy().into_owned();
    Some(
        env.program(&python)
            .env("CONTREE_TOKEN", TOKEN_A)
            .env("CONTREE_BASE_URL", server.url())
            // No auth.ini of the user's: the SDK reads ~/.config/contree.
            .env("HOME", &work)
            .env("WORK", &work)
            .arg(file)
            .output(),
    )
}

/// The `ok …` lines a script printed, after it succeeded.
fn checks(out: Output) -> Vec<String> {
    let out = out.success();
    out.stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix("ok ").map(str::to_string))
        .collect()
}

#[test]
fn sdk_runs_commands_with_stdin_env_files_and_snapshots() {
    let server = Server::start();
    let script = r#"
c = ContreeSync(config=config())
img = c.images.use("host")
r = img.run("echo", args=["a b", "c"]).wait()
check("plain", (r.stdout, r.stderr, r.exit_code), ("a b c\n", "", 0))
r = img.run(shell="echo $FOO; pwd; hostname; echo oops >&2; exit 3",
            env={"FOO": "bar"}, cwd="/tmp", hostname="box").wait()
check("shell", (r.stdout, r.stderr, r.exit_code), ("bar\n/tmp\nbox\n", "oops\n", 3))
check("stdin text", img.run(shell="cat", stdin="hello text").wait().stdout, "hello text")
r = img.run(shell="od -An -tx1 | tr -d ' \\n'", stdin=b"\x00\xff\x01").wait()
check("stdin bytes", r.stdout, "00ff01")
local = WORK / "f.txt"
local.write_text("from the host\n")
r = img.run(shell="cat /data/f.txt", files={"/data/f.txt": str(local)}).wait()
check("files", r.stdout, "from the host\n")
a = img.run(shell="echo one > /one.txt", disposable=False).wait()
b = a.run(shell="cat /one.txt; echo two > /two.txt", disposable=False).wait()
check("chain", b.stdout, "one\n")
check("new images", a.uuid is not None and b.uuid not in (None, a.uuid), True)
check("read", b.read("/two.txt"), b"two\n")
got = b.download("/one.txt", str(WORK / "one.txt"))
check("download", pathlib.Path(got).read_text(), "one\n")
check("unchanged", a.run(shell="true", disposable=False).wait().uuid, a.uuid)
check("disposable", img.run(shell="echo x > /x").wait().uuid, None)
b.tag_as("sdk-chain")
check("tag", c.images.use("sdk-chain").run(shell="cat /two.txt").wait().stdout, "two\n")
print("uuid", b.uuid, flush=True)
"#;
    let Some(out) = run_script(&server, script) else {
        return;
    };
    let text = out.stdout_text();
    assert_eq!(
        checks(out).len(),
        12,
        "every check of the script ran:\n{text}"
    );
    // The tag the SDK set is the server's: the image listing names it.
    let uuid = text
        .lines()
        .find_map(|l| l.strip_prefix("uuid "))
        .expect("the script printed the chain's image");
    let listed = server.get("/v1/images?tag=sdk-chain", TOKEN_A).json();
    assert_eq!(listed["images"][0]["uuid"], uuid, "{listed}");
}

#[test]
fn sdk_sessions_popen_and_untag() {
    let server = Server::start();
    let script = r#"
c = ContreeSync(config=config())
img = c.images.use("host")
s = img.session()
s.run(shell="echo 1 > /s.txt", disposable=False).wait()
s.run(shell="echo 2 >> /s.txt", disposable=False).wait()
check("session read", s.read("/s.txt"), b"1\n2\n")
# (A disposable run leaves the session's image behind: the SDK then refuses more runs.)
check("session", s.run(shell="cat /s.txt", disposable=False).wait().stdout, "1\n2\n")
p = img.popen(["sh", "-c", "cat; echo err >&2; exit 4"], input="piped", text=True)
p.wait()
check("popen", (p.returncode, p.stdout, p.stderr), (4, "piped", "err\n"))
t = s.run(shell="echo t > /t", disposable=False).wait().tag_as("sdk-temp")
print("tagged", t.uuid, flush=True)
t.untag()
p = s.popen(["cat"], text=True)
check("communicate", p.communicate("a\nb\n"), ("a\nb\n", ""))
"#;
    let Some(out) = run_script(&server, script) else {
        return;
    };
    let text = out.stdout_text();
    assert_eq!(checks(out).len(), 4, "{text}");
    // The tag was set, then gone: the image stays, untagged.
    let uuid = text
        .lines()
        .find_map(|l| l.strip_prefix("tagged "))
        .expect("the script tagged an image");
    let listed = server.get("/v1/images?tag=sdk-temp", TOKEN_A).json();
    assert_eq!(listed["images"], serde_json::json!([]), "{listed}");
    let image = server
        .get(&format!("/v1/images?uuid={uuid}"), TOKEN_A)
        .json();
    assert_eq!(image["images"][0]["tag"], Value::Null, "{image}");
}

#[test]
fn sdk_async_runs_in_parallel_and_cancels_what_it_gives_up() {
    let server = Server::start();
    let script = r#"
async def main():
    c = Contree(config=config())
    img = await c.images.use("host")
    done = await asyncio.gather(*[img.run(shell=f"echo {i}; sleep 0.2") for i in range(6)])
    check("parallel", [r.stdout for r in done], [f"{i}\n" for i in range(6)])
    s = img.session()
    await s.run(shell="echo a > /a", disposable=False)
    check("async read", await s.read("/a"), b"a\n")
    check("async session", (await s.run(shell="cat /a")).stdout, "a\n")
    try:
        await asyncio.wait_for(img.run(shell="echo started; sleep 60"), timeout=3)
        check("gave up", "finished", "timed out")
    except (asyncio.TimeoutError, TimeoutError):
        check("gave up", "timed out", "timed out")
asyncio.run(main())
"#;
    let Some(out) = run_script(&server, script) else {
        return;
    };
    let text = out.stdout_text();
    assert_eq!(checks(out).len(), 4, "{text}");
    // Giving up on the wait cancelled the operation on the server: the server records it
    // once the supervisor has stopped the command, which may be after the script is done.
    let cancelled = || {
        server
            .get("/v1/operations?status=CANCELLED", TOKEN_A)
            .json()
    };
    crate::harness::eventually(std::time::Duration::from_secs(20), || {
        cancelled().as_array().is_some_and(|ops| !ops.is_empty())
    });
    let cancelled = cancelled();
    let ops = cancelled.as_array().expect("a list");
    assert_eq!(ops.len(), 1, "{cancelled}");
    assert_eq!(ops[0]["kind"], "instance");
}

/// What the SDK structures every poll into: `GET /operations/{id}` of an instance, while it
/// runs (`result: null`, the time so far) and after (state, the 16 resource counters,
/// output), as the API describes it.
#[test]
fn an_operation_reads_as_the_sdk_s_model_while_running_and_after() {
    let server = Server::start();
    let image = server.host_image(TOKEN_A);
    let body = serde_json::json!({
        "image": image, "command": "read line; echo got $line; sleep 0.3", "shell": true,
        "stdin": {"value": "aGkK", "encoding": "base64", "close": false},
    });
    let reply = server.post_json("/v1/instances", TOKEN_A, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let op = reply.json()["uuid"].as_str().unwrap().to_string();
    let running = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    assert_eq!(running["metadata"]["result"], Value::Null, "{running}");
    assert!(running["duration"].as_f64().is_some(), "{running}");
    let meta = &running["metadata"];
    for (key, want) in [
        ("args", serde_json::json!([])),
        ("env", serde_json::json!({})),
        ("files", serde_json::json!({})),
        ("cwd", serde_json::json!("")),
        ("stdin", body["stdin"].clone()),
    ] {
        assert_eq!(meta[key], want, "{key} in {meta}");
    }
    // Its end: the stdin pipe closed, then the last event.
    let close = serde_json::json!({"value": "", "close": true});
    let reply = server.post_json(
        &format!("/v1/operations/{op}/subprocesses/1/stdin"),
        TOKEN_A,
        &close,
    );
    assert!(reply.status < 300, "{}", reply.text());
    server.events(&op, TOKEN_A, None);
    let done = server.get(&format!("/v1/operations/{op}"), TOKEN_A).json();
    let result = &done["metadata"]["result"];
    let state = &result["state"];
    assert_eq!(state["exit_code"], 0, "{done}");
    assert_eq!(state["signal"], -1, "{done}");
    assert!(state["pid"].as_u64().is_some_and(|p| p > 0), "{done}");
    for flag in ["timed_out", "core_dump", "stopped", "continued"] {
        assert_eq!(state[flag], false, "{flag} in {done}");
    }
    let resources = result["resources"].as_object().expect("resources");
    assert_eq!(resources.len(), 16, "{done}");
    assert!(resources["elapsed_time"].as_f64().unwrap() >= 0.3, "{done}");
    assert_eq!(result["stdout"]["value"], "got hi\n", "{done}");
    assert!(done["consumed_cpu"].as_f64().is_some(), "{done}");
}
