//! Lua hooks (docs/hooks.md): the four events with their payloads and order, edits that
//! take effect in the sandbox, aborts that leave nothing behind, the failure policy per
//! event, the budget and memory limit, trust for project hooks, detached runs, and the
//! example hooks of the repository's `hooks/`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{sha256_hex, Env, Output};

/// A hook file written into the scratch dir (for `--hook`).
fn hook(env: &Env, name: &str, source: &str) -> String {
    env.write(&format!("hook-files/{name}"), source)
        .to_string_lossy()
        .into_owned()
}

/// A hook file in the config dir (`$CONTREE_HOME/hooks/`), which every run picks up.
fn config_hook(env: &Env, name: &str, source: &str) -> PathBuf {
    let dir = env.home().join("hooks");
    std::fs::create_dir_all(&dir).expect("create config hooks dir");
    let path = dir.join(name);
    std::fs::write(&path, source).expect("write config hook");
    path
}

/// An example hook of the repository.
fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("hooks")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Where `TRACER` hooks write, one JSON line per call: `{"tag", "event", "payload"}`.
fn trace_file(env: &Env) -> PathBuf {
    env.work().join("trace.jsonl")
}

fn trace(env: &Env) -> Vec<Value> {
    match std::fs::read_to_string(trace_file(env)) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("trace line is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn events(trace: &[Value]) -> Vec<String> {
    trace
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["tag"].as_str().unwrap(),
                t["event"].as_str().unwrap()
            )
        })
        .collect()
}

/// Records every event with its payload under a tag, changing nothing.
fn tracer(tag: &str) -> String {
    format!(
        r#"
local function rec(event, payload)
  contree.append(contree.env("TRACE"), contree.json.encode({{tag = "{tag}", event = event, payload = payload}}) .. "\n")
end
contree.on("pre-attach", function(plan) rec("pre-attach", plan) end)
contree.on("pre-spawn", function(req) rec("pre-spawn", req) end)
contree.on("on-output", function(chunk) rec("on-output", chunk) end)
contree.on("on-exit", function(result) rec("on-exit", result) end)
"#
    )
}

/// `contree run ARGS…` with `TRACE` set for tracer hooks.
fn run(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    env.cmd(all).env("TRACE", trace_file(env)).output()
}

fn blob_exists(env: &Env, content: &[u8]) -> bool {
    env.home()
        .join("store/blobs/sha256")
        .join(sha256_hex(content))
        .exists()
}

#[test]
fn every_event_fires_in_pipeline_order_with_its_payload() {
    let env = Env::host();
    config_hook(&env, "trace.lua", &tracer("t"));
    let image_before = env.session_image();
    let host = env.write("in.txt", "attached\n");
    let spec = format!("{}:/in.txt:m600", host.display());
    run(
        &env,
        &[
            "-F",
            &spec,
            "--file-excludes",
            "*.tmp",
            "-e",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
    )
    .success()
    .stdout("out\n");
    let t = trace(&env);
    let mut seen = events(&t);
    seen.dedup();
    assert_eq!(
        seen,
        ["t:pre-attach", "t:pre-spawn", "t:on-output", "t:on-exit"],
        "{t:#?}"
    );

    let plan = &t[0]["payload"];
    assert_eq!(plan["files"][0]["host"], host.to_str().unwrap());
    assert_eq!(plan["files"][0]["instance"], "/in.txt");
    assert_eq!(plan["files"][0]["mode"], "0600");
    assert_eq!(plan["excludes"], serde_json::json!(["*.tmp"]));

    let req = &t[1]["payload"];
    assert_eq!(req["command"], "sh");
    assert_eq!(
        req["args"],
        serde_json::json!(["-c", "echo out; echo err >&2"])
    );
    assert_eq!(req["env"]["GREETING"], "hi");
    assert_eq!(req["image"], image_before);
    assert!(req.get("timeout").is_none(), "no -t: timeout is nil: {req}");
    assert_eq!(req["truncate"], 65536);
    assert_eq!(req["hostname"], "linuxkit");
    assert_eq!(req["shell"], false);
    assert_eq!(req["disposable"], false);
    assert_eq!(req["network"], true);
    let file = &req["files"]["/in.txt"];
    assert_eq!(file["sha256"], sha256_hex(b"attached\n"));
    assert_eq!(file["size"], 9);
    assert_eq!(file["mode"], "0600");
    assert!(
        file.get("uuid").is_none(),
        "not uploaded before pre-spawn: {file}"
    );

    let chunks: Vec<&Value> = t
        .iter()
        .filter(|e| e["event"] == "on-output")
        .map(|e| &e["payload"])
        .collect();
    let text = |stream: &str| -> String {
        chunks
            .iter()
            .filter(|c| c["stream"] == stream)
            .map(|c| c["data"].as_str().unwrap())
            .collect()
    };
    assert_eq!(text("stdout"), "out\n");
    assert_eq!(text("stderr"), "err\n");
    assert!(chunks.iter().all(|c| c["offset"].is_u64()));

    let result = &t.last().unwrap()["payload"];
    assert_eq!(result["op"], env.last_op());
    assert_eq!(result["status"], "SUCCESS");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["timed_out"], false);
    assert_eq!(result["stdout_bytes"], 4);
    assert_eq!(result["stderr_bytes"], 4);
    assert_eq!(result["result_image"], env.session_image());
    assert!(result["duration"].is_number());
    let file = &result["request"]["files"]["/in.txt"];
    assert!(file["uuid"].is_string(), "uploaded by on-exit: {file}");
    assert_eq!(file["sha256"], sha256_hex(b"attached\n"));
}

#[test]
fn handlers_run_in_file_order_then_registration_order() {
    let env = Env::host();
    config_hook(&env, "b.lua", &tracer("config-b"));
    config_hook(&env, "a.lua", &tracer("config-a"));
    let flag = hook(
        &env,
        "flag.lua",
        r#"
contree.on("pre-spawn", function() contree.append(contree.env("TRACE"), '{"tag":"flag-1","event":"pre-spawn"}\n') end)
contree.on("pre-spawn", function() contree.append(contree.env("TRACE"), '{"tag":"flag-2","event":"pre-spawn"}\n') end)
"#,
    );
    run(&env, &["--hook", &flag, "--", "true"]).success();
    let spawn: Vec<String> = events(&trace(&env))
        .into_iter()
        .filter(|e| e.ends_with(":pre-spawn"))
        .collect();
    assert_eq!(
        spawn,
        [
            "config-a:pre-spawn",
            "config-b:pre-spawn",
            "flag-1:pre-spawn",
            "flag-2:pre-spawn"
        ]
    );
}

#[test]
fn an_env_var_added_in_pre_spawn_is_seen_by_the_command() {
    let env = Env::host();
    let add = hook(
        &env,
        "add-env.lua",
        r#"
contree.on("pre-spawn", function(req)
  req.env.FROM_HOOK = "yes:" .. req.command
  return req
end)
-- Changing the table without returning it changes nothing: nil means no change.
contree.on("pre-spawn", function(req)
  req.env.IGNORED = "1"
end)
"#,
    );
    run(
        &env,
        &[
            "--hook",
            &add,
            "--",
            "sh",
            "-c",
            "echo $FROM_HOOK ${IGNORED:-unset}",
        ],
    )
    .success()
    .stdout("yes:sh unset\n");
}

#[test]
fn pre_spawn_edits_to_the_request_take_effect() {
    let env = Env::host();
    let edit = hook(
        &env,
        "edit.lua",
        r#"
contree.on("pre-spawn", function(req)
  req.hostname = "from-hook"
  req.args = { "-c", "hostname; pwd; ls /moved" }
  req.cwd = "/tmp"
  local f = req.files["/orig.txt"]
  req.files["/orig.txt"] = nil
  req.files["/moved/file.txt"] = f
  return req
end)
"#,
    );
    let host = env.write("orig.txt", "x");
    let spec = format!("{}:/orig.txt", host.display());
    run(
        &env,
        &["--hook", &edit, "-F", &spec, "--", "sh", "-c", "false"],
    )
    .success()
    .stdout("from-hook\n/tmp\nfile.txt\n");
}

#[test]
fn a_spec_dropped_in_pre_attach_is_not_uploaded() {
    let env = Env::host();
    let drop = hook(
        &env,
        "drop.lua",
        r#"
contree.on("pre-attach", function(plan)
  local kept = {}
  for _, spec in ipairs(plan.files) do
    if not spec.host:match("secret") then table.insert(kept, spec) end
  end
  plan.files = kept
  -- a spec may also be given as text, in the --file grammar
  table.insert(plan.files, contree.env("EXTRA") .. ":/data/extra.txt")
  return plan
end)
"#,
    );
    let keep = env.write("keep.txt", "keep me\n");
    let secret = env.write("secret.txt", "do not upload\n");
    let extra = env.write("extra.txt", "added by a hook\n");
    env.cmd([
        "run",
        "--hook",
        &drop,
        "-F",
        &format!("{}:/data/keep.txt", keep.display()),
        "-F",
        &format!("{}:/data/secret.txt", secret.display()),
        "--",
        "ls",
        "/data",
    ])
    .env("EXTRA", &extra)
    .output()
    .success()
    .stdout("extra.txt\nkeep.txt\n");
    assert!(blob_exists(&env, b"keep me\n"));
    assert!(!blob_exists(&env, b"do not upload\n"));
}

#[test]
fn an_abort_stops_the_run_before_anything_is_uploaded_or_spawned() {
    let env = Env::host();
    let abort = hook(
        &env,
        "policy.lua",
        r#"
contree.on("pre-spawn", function(req)
  if req.network then
    contree.abort("networked runs are not allowed here")
  end
end)
"#,
    );
    let host = env.write("payload.txt", "never uploaded\n");
    let spec = format!("{}:/p.txt", host.display());
    let out = run(&env, &["--hook", &abort, "-F", &spec, "--", "true"])
        .code(77)
        .stdout_empty()
        .stderr_contains("policy.lua:4: networked runs are not allowed here");
    assert!(out.stderr_text().contains(&abort), "names the full path");
    assert!(env.all_ops().is_empty(), "no operation");
    assert!(!blob_exists(&env, b"never uploaded\n"), "no upload");
    // The same run without the network passes the policy.
    run(
        &env,
        &["--hook", &abort, "-F", &spec, "--no-network", "--", "true"],
    )
    .success();
}

#[test]
fn pcall_cannot_swallow_an_abort() {
    let env = Env::host();
    let sneaky = hook(
        &env,
        "sneaky.lua",
        r#"
contree.on("pre-attach", function(plan)
  local ok = pcall(contree.abort, "caught?")
  return nil
end)
"#,
    );
    run(&env, &["--hook", &sneaky, "--", "true"])
        .code(77)
        .stderr_contains("sneaky.lua:3: caught?");
    assert!(env.all_ops().is_empty());
}

#[test]
fn an_error_in_pre_spawn_fails_closed_naming_file_and_line() {
    let env = Env::host();
    let broken = hook(
        &env,
        "broken.lua",
        "contree.on('pre-spawn', function(req)\n  return req.nope.field\nend)\n",
    );
    run(&env, &["--hook", &broken, "--", "true"])
        .code(77)
        .stderr_contains("broken.lua:2: attempt to index a nil value (field 'nope')")
        .stderr_contains(
            "hint: fix the hook, or skip every hook for one run with `contree run --no-hooks ...`",
        );
    assert!(env.all_ops().is_empty());
    run(&env, &["--hook", &broken, "--no-hooks", "--", "true"]).success();
}

#[test]
fn an_unknown_returned_field_is_an_error_naming_it() {
    let env = Env::host();
    let typo = hook(
        &env,
        "typo.lua",
        "contree.on('pre-spawn', function(req)\n  req.enviroment = {}\n  return req\nend)\n",
    );
    run(&env, &["--hook", &typo, "--", "true"])
        .code(77)
        .stderr_contains("typo.lua:1: the pre-spawn handler returned unknown field 'enviroment'");
    let plan = hook(
        &env,
        "plan.lua",
        "contree.on('pre-attach', function(plan)\n  plan.files = {{host = 'x', inst = '/y'}}\n  return plan\nend)\n",
    );
    run(&env, &["--hook", &plan, "--", "true"])
        .code(77)
        .stderr_contains("returned unknown field 'files[1].inst'");
}

#[test]
fn a_hook_file_that_does_not_load_stops_the_run() {
    let env = Env::host();
    let bad = hook(
        &env,
        "syntax.lua",
        "contree.on('pre-spawn', function(req)\n  return req..\nend)\n",
    );
    run(&env, &["--hook", &bad, "--", "true"])
        .code(77)
        .stderr_contains("syntax.lua:3:");
    let event = hook(&env, "event.lua", "contree.on('pre_spawn', print)\n");
    run(&env, &["--hook", &event, "--", "true"])
        .code(77)
        .stderr_contains("event.lua:1: unknown event 'pre_spawn' (expected pre-attach, pre-spawn, on-output, on-exit)");
    run(&env, &["--hook", "missing.lua", "--", "true"])
        .code(77)
        .stderr_contains("[ERROR] cannot read hook file '")
        .stderr_contains("missing.lua': No such file or directory");
}

#[test]
fn an_endless_loop_ends_at_the_budget_with_file_and_line() {
    let env = Env::host();
    let spin = hook(
        &env,
        "spin.lua",
        "contree.on('pre-spawn', function(req)\n  while true do end\nend)\n",
    );
    env.cmd(["run", "--hook", &spin, "--", "true"])
        .env("CONTREE_HOOK_TIME_MS", "200")
        .output()
        .code(77)
        .stderr_contains("spin.lua:2: over its budget");
    // Catching the budget error in a loop does not help.
    let stubborn = hook(
        &env,
        "stubborn.lua",
        "contree.on('pre-spawn', function(req)\n  while true do\n    pcall(function() while true do end end)\n  end\nend)\n",
    );
    env.cmd(["run", "--hook", &stubborn, "--", "true"])
        .env("CONTREE_HOOK_TIME_MS", "200")
        .output()
        .code(77)
        .stderr_contains("stubborn.lua:3: over its budget");
    // The instruction count is a budget too, and so is a file's top level.
    let top = hook(
        &env,
        "top.lua",
        "local n = 0\nwhile true do n = n + 1 end\n",
    );
    env.cmd(["run", "--hook", &top, "--", "true"])
        .env("CONTREE_HOOK_INSTRUCTIONS", "100000")
        .output()
        .code(77)
        .stderr_contains("top.lua:2: over its budget");
    assert!(env.all_ops().is_empty());
}

#[test]
fn a_huge_allocation_ends_at_the_memory_limit_with_file_and_line() {
    let env = Env::host();
    let hog = hook(
        &env,
        "hog.lua",
        "contree.on('pre-spawn', function(req)\n  local t = {}\n  for i = 1, 1e9 do t[i] = i end\nend)\n",
    );
    env.cmd(["run", "--hook", &hog, "--", "true"])
        .env("CONTREE_HOOK_MEMORY_MB", "16")
        .output()
        .code(77)
        .stderr_contains("hog.lua:3: out of memory (hooks may use 16 MiB");
    let rep = hook(
        &env,
        "rep.lua",
        "contree.on('pre-spawn', function(req)\n  return string.rep('x', 1 << 40)\nend)\n",
    );
    run(&env, &["--hook", &rep, "--", "true"])
        .code(77)
        .stderr_contains("rep.lua:")
        .check("says why", |o| {
            let e = o.stderr_text();
            e.contains("out of memory") || e.contains("too large")
        });
    assert!(env.all_ops().is_empty());
}

#[test]
fn on_output_can_replace_and_drop_chunks() {
    let env = Env::host();
    let filter = hook(
        &env,
        "filter.lua",
        r#"
contree.on("on-output", function(chunk)
  if chunk.stream == "stderr" then return false end
  return (chunk.data:gsub("secret", "******"))
end)
contree.on("on-output", function(chunk)
  return chunk.data:upper()
end)
"#,
    );
    run(
        &env,
        &[
            "--hook",
            &filter,
            "--",
            "sh",
            "-c",
            "echo my secret; echo noise >&2",
        ],
    )
    .success()
    .stdout("MY ******\n")
    .stderr_empty();
}

#[test]
fn a_failing_on_output_handler_passes_output_through_with_one_warning() {
    let env = Env::host();
    let flaky = hook(
        &env,
        "flaky.lua",
        r#"
contree.on("on-output", function(chunk)
  if chunk.offset > 0 then while true do end end
  return chunk.data:upper()
end)
"#,
    );
    let out = env
        .cmd([
            "run",
            "--hook",
            &flaky,
            "--",
            "sh",
            "-c",
            "echo one; sleep 0.3; echo two; sleep 0.3; echo three",
        ])
        .env("CONTREE_HOOK_TIME_MS", "100")
        .output()
        .success()
        .stdout("ONE\ntwo\nthree\n")
        .stderr_contains("flaky.lua:3: over its budget");
    assert_eq!(
        out.stderr_text().matches("[WARNING]").count(),
        1,
        "one warning"
    );
}

#[test]
fn a_failing_on_exit_handler_warns_and_keeps_the_exit_code() {
    let env = Env::host();
    let fail = hook(
        &env,
        "exit.lua",
        "contree.on('on-exit', function(r)\n  error('cannot notify ' .. r.exit_code)\nend)\n",
    );
    run(
        &env,
        &["--hook", &fail, "--", "sh", "-c", "echo done; exit 3"],
    )
    .code(3)
    .stdout("done\n")
    .stderr_contains("exit.lua:2: cannot notify 3");
}

#[test]
fn redact_secrets_masks_keys_and_tokens_split_across_chunks() {
    let env = Env::host();
    // A tracer first sees the raw chunks, to show the secrets really were split.
    config_hook(&env, "0-trace.lua", &tracer("raw"));
    let script = "printf 'key AKIAIOSF'; sleep 0.5; \
                  printf 'ODNN7EXAMPLE auth: Bear'; sleep 0.5; \
                  printf 'er abcdefgh'; sleep 0.5; \
                  printf 'ijklmnop0123== end\\n'; printf 'token sk-live-42xyz\\n' >&2";
    env.cmd([
        "run",
        "--hook",
        &example("redact-secrets.lua"),
        "--",
        "sh",
        "-c",
        script,
    ])
    .env("TRACE", trace_file(&env))
    .env("CONTREE_REDACT_ENV", "MY_TOKEN")
    .env("MY_TOKEN", "sk-live-42xyz")
    .output()
    .success()
    .stdout("key [REDACTED] auth: Bearer [REDACTED] end\n")
    .stderr("token [REDACTED]\n");
    let raw: Vec<String> = trace(&env)
        .iter()
        .filter(|e| e["event"] == "on-output" && e["payload"]["stream"] == "stdout")
        .map(|e| e["payload"]["data"].as_str().unwrap().to_string())
        .collect();
    assert!(raw.len() >= 3, "{raw:?}");
    assert!(
        !raw.iter().any(|c| c.contains("AKIAIOSFODNN7EXAMPLE")),
        "{raw:?}"
    );
}

#[test]
fn redaction_applies_to_the_json_record_too() {
    let env = Env::host();
    let red = hook(
        &env,
        "red.lua",
        "contree.on('on-output', contree.redact{'aws'})\n",
    );
    let record = env
        .cmd([
            "-o",
            "json",
            "run",
            "--hook",
            &red,
            "--",
            "echo",
            "AKIAIOSFODNN7EXAMPLE",
        ])
        .output()
        .success()
        .json();
    assert_eq!(record["stdout"], "[REDACTED]\n");
}

#[test]
fn require_timeout_refuses_runs_without_t_or_over_the_maximum() {
    let env = Env::host();
    let policy = example("require-timeout.lua");
    run(&env, &["--hook", &policy, "--", "true"])
        .code(77)
        .stderr_contains("require-timeout.lua:13: no timeout given: add -t SECONDS (at most 3600)");
    env.cmd(["run", "--hook", &policy, "-t", "60", "--", "true"])
        .env("CONTREE_MAX_TIMEOUT", "30")
        .output()
        .code(77)
        .stderr_contains("timeout 60s is over the maximum of 30s");
    assert!(env.all_ops().is_empty());
    run(&env, &["--hook", &policy, "-t", "30", "--", "echo", "ok"])
        .success()
        .stdout("ok\n");
}

#[test]
fn audit_log_appends_one_json_line_per_run() {
    let env = Env::host();
    let log = env.work().join("audit.jsonl");
    for cmd in [["sh", "-c", "echo hi"], ["sh", "-c", "exit 4"]] {
        let mut args = vec!["run", "--hook"];
        let hook = example("audit-log.lua");
        args.push(&hook);
        args.push("--");
        args.extend(cmd);
        env.cmd(args).env("CONTREE_AUDIT_LOG", &log).output();
    }
    let text = std::fs::read_to_string(&log).expect("audit log written");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ops = env.all_ops();
    assert_eq!(lines[0]["op"], ops[1]);
    assert_eq!(lines[0]["exit_code"], 0);
    assert_eq!(lines[0]["status"], "SUCCESS");
    assert_eq!(lines[0]["stdout_bytes"], 3);
    assert_eq!(lines[0]["command"], "sh");
    assert_eq!(lines[0]["args"], serde_json::json!(["-c", "echo hi"]));
    assert_eq!(lines[1]["op"], ops[0]);
    assert_eq!(lines[1]["exit_code"], 4);
    // Without CONTREE_AUDIT_LOG it goes to the data dir.
    env.run(["run", "--hook", &example("audit-log.lua"), "--", "true"])
        .success();
    assert!(env.home().join("audit.log").is_file());
}

#[test]
fn default_excludes_adds_team_excludes_to_directory_attachments() {
    let env = Env::host();
    env.write("proj/main.c", "int main;\n");
    env.write("proj/debug.log", "noise\n");
    env.write("proj/target/out.o", "obj\n");
    env.write("proj/notes.md", "kept\n");
    let spec = format!("{}:/src", env.work().join("proj").display());
    run(
        &env,
        &[
            "--hook",
            &example("default-excludes.lua"),
            "-F",
            &spec,
            "--file-excludes",
            "*.md",
            "--",
            "find",
            "/src",
            "-type",
            "f",
        ],
    )
    .success()
    .stdout("/src/main.c\n");
    assert!(!blob_exists(&env, b"noise\n"));
}

#[test]
fn untrusted_project_hooks_do_not_run_and_say_why() {
    let env = Env::host();
    let project = env.work().join("repo");
    let hooks_dir = project.join(".contree/hooks");
    std::fs::create_dir_all(project.join("sub")).unwrap();
    std::fs::create_dir_all(&hooks_dir).unwrap();
    std::fs::write(
        hooks_dir.join("marker.lua"),
        "contree.on('pre-spawn', function(req) req.env.PROJECT_HOOK = 'ran'; return req end)\n",
    )
    .unwrap();
    let from_sub = |env: &Env| {
        env.cmd(["run", "--", "sh", "-c", "echo ${PROJECT_HOOK:-no}"])
            .current_dir(project.join("sub"))
            .output()
    };
    let canonical = hooks_dir.canonicalize().unwrap();
    let root = project.canonicalize().unwrap();
    let out = from_sub(&env).success().stdout("no\n").stderr_contains(&format!(
        "project hooks in {} are not trusted, so they did not run; review them, then: contree hooks trust {}",
        canonical.display(),
        root.display()
    ));
    assert_eq!(out.stderr_text().lines().count(), 1, "one line");

    env.cmd(["hooks", "trust"])
        .current_dir(project.join("sub"))
        .output()
        .success()
        .stdout_contains("marker.lua");
    from_sub(&env).success().stdout("ran\n").stderr_empty();

    // Any change to the files takes the trust away again.
    std::fs::write(hooks_dir.join("extra.lua"), "-- new\n").unwrap();
    from_sub(&env)
        .success()
        .stdout("no\n")
        .stderr_contains("changed since they were trusted (extra.lua added)");
    env.cmd(["hooks", "trust", project.to_str().unwrap()])
        .output()
        .success();
    std::fs::write(hooks_dir.join("marker.lua"), "-- edited\n").unwrap();
    from_sub(&env)
        .success()
        .stdout("no\n")
        .stderr_contains("(marker.lua changed)");
    // --no-hooks: nothing runs and nothing is said.
    env.cmd(["run", "--no-hooks", "--", "true"])
        .current_dir(project.join("sub"))
        .output()
        .success()
        .stderr_empty();
}

#[test]
fn hooks_list_shows_origin_trust_and_events() {
    let env = Env::host();
    config_hook(
        &env,
        "audit.lua",
        &std::fs::read_to_string(example("audit-log.lua")).unwrap(),
    );
    let project = env.work().join("repo/.contree/hooks");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("p.lua"), "error('must not run')\n").unwrap();
    let flag = hook(&env, "both.lua", &tracer("x"));
    let rows = env
        .cmd(["-o", "json", "hooks", "list", "--hook", &flag])
        .current_dir(env.work().join("repo"))
        .output()
        .success()
        .stderr_contains("are not trusted")
        .json_lines();
    let summary: Vec<(String, String, bool, String)> = rows
        .iter()
        .map(|r| {
            (
                Path::new(r["file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                r["origin"].as_str().unwrap().to_string(),
                r["trusted"].as_bool().unwrap(),
                r["events"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("audit.lua".into(), "config".into(), true, "on-exit".into()),
            (
                "p.lua".into(),
                "project".into(),
                false,
                "(not run: untrusted)".into()
            ),
            (
                "both.lua".into(),
                "flag".into(),
                true,
                "pre-attach,pre-spawn,on-output,on-exit".into()
            ),
        ]
    );
}

#[test]
fn detached_runs_fire_pre_attach_and_pre_spawn_only() {
    let env = Env::host();
    config_hook(&env, "trace.lua", &tracer("d"));
    run(&env, &["-d", "--", "sh", "-c", "echo detached"]).success();
    let op = env.last_op();
    env.run(["wait", &op]).success();
    assert_eq!(
        events(&trace(&env)),
        ["d:pre-attach", "d:pre-spawn"],
        "the CLI does not follow a detached run"
    );
    // An abort stops a detached run too.
    let deny = hook(
        &env,
        "deny.lua",
        "contree.on('pre-spawn', function() contree.abort('no') end)\n",
    );
    run(&env, &["-d", "--hook", &deny, "--", "true"]).code(77);
    assert_eq!(env.all_ops(), [op]);
}

#[test]
fn no_hooks_disables_every_hook_for_one_run() {
    let env = Env::host();
    config_hook(&env, "trace.lua", &tracer("n"));
    let deny = hook(
        &env,
        "deny.lua",
        "contree.on('pre-spawn', function() contree.abort('no') end)\n",
    );
    run(&env, &["--no-hooks", "--hook", &deny, "--", "echo", "free"])
        .success()
        .stdout("free\n");
    assert!(trace(&env).is_empty());
}

#[test]
fn hooks_get_a_restricted_standard_library() {
    let env = Env::host();
    let probe = hook(
        &env,
        "probe.lua",
        r#"
local have = {}
for _, name in ipairs({"io", "debug", "package", "require", "dofile", "loadfile", "load", "coroutine"}) do
  if _G[name] ~= nil then table.insert(have, name) end
end
for _, name in ipairs({"execute", "exit", "remove", "rename", "getenv"}) do
  if os[name] ~= nil then table.insert(have, "os." .. name) end
end
print("forbidden present: " .. table.concat(have, ","))
print(string.format("%d", math.floor(2.5)), utf8.char(72), type(os.time()), type(os.date("%Y")))
local v = contree.json.decode('{"a":[1,2,{"b":null}],"c":"d"}')
print(contree.json.encode(v), contree.json.encode(contree.json.array({})))
"#,
    );
    run(
        &env,
        &["--hook", &probe, "--", "echo", "stdout is the command's"],
    )
    .success()
    .stdout("stdout is the command's\n")
    .stderr_contains("hook probe.lua: forbidden present: \n")
    .stderr_contains("hook probe.lua: 2\tH\tnumber\tstring\n")
    .stderr_contains(r#"hook probe.lua: {"a":[1,2,{}],"c":"d"}	[]"#);
}

#[test]
fn hook_budgets_come_from_config_toml_unless_the_environment_says_otherwise() {
    let env = Env::host();
    let spin = hook(
        &env,
        "spin.lua",
        "contree.on('pre-spawn', function(req)\n  while true do end\nend)\n",
    );
    let config = env.home().join("config.toml");
    std::fs::write(&config, "[hooks]\ntime_ms = 150\n").expect("config.toml");
    env.cmd(["run", "--hook", &spin, "--", "true"])
        .output()
        .code(77)
        .stderr_contains("spin.lua:2: over its budget (150 ms");
    env.cmd(["run", "--hook", &spin, "--", "true"])
        .env("CONTREE_HOOK_TIME_MS", "120")
        .output()
        .code(77)
        .stderr_contains("spin.lua:2: over its budget (120 ms");
    // A bad value names the file and key it came from, and nothing runs.
    std::fs::write(&config, "[hooks]\ntime_ms = \"soon\"\n").expect("config.toml");
    env.cmd(["run", "--hook", &spin, "--", "true"])
        .output()
        .code(1)
        .stderr_contains("config.toml: hooks.time_ms=soon: expected a whole number above 0");
    assert!(env.all_ops().is_empty());
}
