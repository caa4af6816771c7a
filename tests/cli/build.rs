//! `contree build`: a multi-stage Dockerfile on a busybox image (imported from Debian's
//! busybox-static) built, rebuilt from the cache, rebuilt from a changed COPY, a failing
//! RUN, COPY and COPY --from into a `FROM scratch` stage, and a build through `contree
//! serve`.

use crate::harness::{busybox_rootfs, skip, static_busybox, Env, Output};
use crate::serve::{our_client, Server};
use std::path::PathBuf;

/// A data dir with the busybox image tagged `bb`, or `None` (test reported skipped).
fn busybox_env() -> Option<Env> {
    let Some(busybox) = static_busybox() else {
        skip("needs a static /bin/busybox (apt-get install busybox-static)");
        return None;
    };
    let env = Env::new();
    let root = busybox_rootfs(&busybox, env.work());
    env.run(["images", "import", root.to_str().unwrap(), "--tag", "bb"])
        .success();
    Some(env)
}

const MULTI_STAGE: &str = r#"# a two-stage build
ARG BASE=bb
FROM ${BASE} AS builder
ENV GREETING=hi
WORKDIR /work
COPY src/ ./src/
RUN echo "$GREETING from builder" > out.txt \
    && cat src/hello.txt >> out.txt
FROM bb
ARG WHO=world
COPY app.txt /app/
COPY --from=builder /work/out.txt /app/out.txt
RUN ["sh", "-c", "cat /app/app.txt /app/out.txt; echo who=$WHO"]
EXPOSE 80
"#;

/// The context of `MULTI_STAGE` under the env's scratch dir.
fn context(env: &Env) -> PathBuf {
    env.write("ctx/Dockerfile", MULTI_STAGE);
    env.write("ctx/src/hello.txt", "hello\n");
    env.write("ctx/app.txt", "v1\n");
    env.work().join("ctx")
}

fn build(env: &Env, args: &[&str]) -> Output {
    let mut cmd = env.cmd(["build"]);
    for a in args {
        cmd = cmd.arg(a);
    }
    cmd.output()
}

/// The image a build printed last on stdout.
fn built_image(out: &Output) -> String {
    out.stdout_text()
        .lines()
        .last()
        .expect("the image on the last line")
        .to_string()
}

fn cache_hits(out: &Output) -> usize {
    out.stderr_text().matches("---> Using cache").count()
}

#[test]
fn a_multi_stage_build_runs_then_reuses_every_step_then_rebuilds_from_a_changed_copy() {
    let Some(env) = busybox_env() else { return };
    let ctx = context(&env);
    let ctx = ctx.to_str().unwrap();

    let first = build(&env, &[ctx, "--tag", "app:1", "--build-arg", "WHO=tests"])
        .success()
        .stdout_contains("v1\nhi from builder\nhello\nwho=tests\n")
        .stderr_contains("Step 1/12: ARG BASE=bb")
        .stderr_contains("Step 12/12: EXPOSE 80")
        .stderr_contains("[WARNING] EXPOSE is not supported");
    assert_eq!(cache_hits(&first), 0, "{}", first.stderr_text());
    let image = built_image(&first);
    // The result is the session's image and carries the tag; the file COPY --from
    // brought from the first stage is in it.
    assert_eq!(env.session_image(), image);
    env.run(["run", "--use", "tag:app:1", "--", "cat", "/app/out.txt"])
        .success()
        .stdout("hi from builder\nhello\n");

    // Unchanged: every image step (2 COPY + 1 RUN in the first stage, 2 COPY + 1 RUN in
    // the second) comes from the cache, no operation is started, the image is the same.
    let ops = env.all_ops().len();
    let again = build(&env, &[ctx, "--build-arg", "WHO=tests"]).success();
    assert_eq!(cache_hits(&again), 5, "{}", again.stderr_text());
    assert_eq!(env.all_ops().len(), ops, "a cached rebuild runs nothing");
    assert_eq!(built_image(&again), image);
    assert!(!again.stdout_text().contains("hello"), "no RUN ran");

    // A changed --build-arg changes the RUN that sees it, and only that one.
    let other = build(&env, &[ctx, "--build-arg", "WHO=else"])
        .success()
        .stdout_contains("who=else\n");
    assert_eq!(cache_hits(&other), 4, "{}", other.stderr_text());

    // A changed COPY input: the first stage is reused, the second stage rebuilds from
    // that COPY on.
    env.write("ctx/app.txt", "v2\n");
    let ops = env.all_ops().len();
    let changed = build(&env, &[ctx, "--build-arg", "WHO=tests"])
        .success()
        .stdout_contains("v2\nhi from builder\nhello\nwho=tests\n");
    assert_eq!(cache_hits(&changed), 2, "{}", changed.stderr_text());
    let stderr = changed.stderr_text();
    let copy_step = stderr.find("Step 9/12: COPY app.txt").unwrap();
    assert!(!stderr[copy_step..].contains("Using cache"), "{stderr}");
    // Locally COPY places its files without a sandbox: only the RUN is an operation.
    assert_eq!(env.all_ops().len(), ops + 1, "only the RUN ran");
    assert_ne!(built_image(&changed), image);

    // --no-cache runs everything again.
    let fresh = build(&env, &[ctx, "--no-cache"]).success();
    assert_eq!(cache_hits(&fresh), 0, "{}", fresh.stderr_text());
}

#[test]
fn a_failing_run_stops_the_build_with_its_exit_code_and_names_the_step() {
    let Some(env) = busybox_env() else { return };
    env.write(
        "ctx/Dockerfile",
        "FROM bb\nRUN echo before\nRUN echo failing; exit 3\nRUN echo never\n",
    );
    let ctx = env.work().join("ctx");
    env.run(["use", "bb"]).success();
    let image = env.session_image();
    build(&env, &[ctx.to_str().unwrap()])
        .code(3)
        .stdout_contains("before\nfailing\n")
        .stdout_lacks("never")
        .stderr_contains("[ERROR] Step 3/4 failed: RUN echo failing; exit 3: exit code 3");
    assert_eq!(
        env.session_image(),
        image,
        "a failed build leaves the session"
    );
    // The step before the failure is cached for the next try.
    let out = build(&env, &[ctx.to_str().unwrap()]).code(3);
    assert_eq!(cache_hits(&out), 1, "{}", out.stderr_text());
}

#[test]
fn dockerfile_errors_name_the_line() {
    let Some(env) = busybox_env() else { return };
    for (name, text, error) in [
        (
            "Dockerfile.bad",
            "FROM bb\nFROBNICATE now\n",
            "line 2: unknown instruction 'FROBNICATE'",
        ),
        (
            "Dockerfile.src",
            "FROM bb\nCOPY missing.txt /x\n",
            "Step 2/2 (COPY missing.txt /x): 'missing.txt' in the build context",
        ),
    ] {
        let df = env.write(name, text);
        build(
            &env,
            &[
                "--dockerfile",
                df.to_str().unwrap(),
                env.work().to_str().unwrap(),
            ],
        )
        .code(1)
        .stderr_contains(error);
    }
}

#[test]
fn from_scratch_makes_an_empty_image() {
    let Some(env) = busybox_env() else { return };
    env.write(
        "ctx/Dockerfile",
        "FROM bb AS tools\nFROM scratch\nLABEL empty=yes\n",
    );
    let out = build(&env, &[env.work().join("ctx").to_str().unwrap()]).success();
    let image = built_image(&out);
    env.run(["ls", "/"]).success().stdout_empty();
    // Rebuilt, the empty image is the cached one.
    let again = build(&env, &[env.work().join("ctx").to_str().unwrap()]).success();
    assert_eq!(built_image(&again), image);
}

#[test]
fn copy_and_copy_from_fill_a_scratch_stage_without_a_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = busybox_env() else { return };
    env.write(
        "ctx/Dockerfile",
        "FROM bb AS src\n\
         RUN mkdir -p /data/empty /data/sub && chmod 700 /data/empty \\\n\
         \x20   && echo from-src > /data/sub/f && ln -s sub/f /data/link\n\
         FROM scratch\n\
         COPY app.txt /app/\n\
         COPY --from=src /data /data/\n\
         COPY --from=bb /bin/busybox /bin/busybox\n",
    );
    let app = env.write("ctx/app.txt", "app\n");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o750)).unwrap();
    let ctx = env.work().join("ctx");
    let ctx = ctx.to_str().unwrap();
    let ops = env.all_ops().len();
    let first = build(&env, &[ctx, "--tag", "filled"]).success();
    let image = built_image(&first);
    assert_eq!(env.all_ops().len(), ops + 1, "only the RUN is an operation");
    assert_eq!(env.session_image(), image);
    // The image holds only what was copied: its own busybox runs the checks.
    env.run(["ls", "/"])
        .success()
        .stdout_contains("app")
        .stdout_contains("bin")
        .stdout_contains("data")
        .stdout_lacks("etc");
    env.run(["cat", "/app/app.txt"]).success().stdout("app\n");
    env.run([
        "run",
        "--no-network",
        "-D",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox cat /data/link; /bin/busybox readlink /data/link; \
         /bin/busybox stat -c '%a %u:%g %n' /app/app.txt /data/empty /data/sub/f; \
         /bin/busybox ls -A /data/empty | /bin/busybox wc -l",
    ])
    .success()
    .stdout("from-src\nsub/f\n750 0:0 /app/app.txt\n700 0:0 /data/empty\n644 0:0 /data/sub/f\n0\n");

    // Rebuilt: RUN, FROM scratch and the three COPYs come from the cache.
    let ops = env.all_ops().len();
    let again = build(&env, &[ctx]).success();
    assert_eq!(cache_hits(&again), 5, "{}", again.stderr_text());
    assert_eq!(built_image(&again), image);
    assert_eq!(env.all_ops().len(), ops);
}

#[test]
fn a_build_runs_through_contree_serve() {
    let server = Server::start();
    let env = our_client(&server);
    env.use_host();
    env.write(
        "ctx/Dockerfile",
        "FROM host AS first\nWORKDIR /srv\nCOPY note.txt .\nRUN cat note.txt > copy.txt\nFROM host\nCOPY --from=first /srv/copy.txt /copied.txt\nRUN cat /copied.txt\n",
    );
    env.write("ctx/note.txt", "through serve\n");
    let ctx = env.work().join("ctx");
    let out = build(&env, &[ctx.to_str().unwrap(), "--tag", "served"])
        .success()
        .stdout_contains("through serve\n");
    let image = built_image(&out);
    env.run(["run", "--", "cat", "/copied.txt"])
        .success()
        .stdout("through serve\n");
    let again = build(&env, &[ctx.to_str().unwrap()]).success();
    assert_eq!(cache_hits(&again), 4, "{}", again.stderr_text());
    assert_eq!(built_image(&again), image);
}

/// A web server on loopback for ADD: each GET of `/…/NAME` answers the body now in
/// `body` (404 for `/missing`), until the returned guard's server is dropped with the test.
fn loopback_web(body: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let reply = if request.starts_with("GET /missing") {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else {
                let body = body.lock().unwrap().clone();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    format!("http://{addr}")
}

/// ADD of an http URL: fetched on this machine, placed with mode 0600 (named after the URL
/// in a directory), rebuilt from that step when what the URL serves changes; a URL the
/// server refuses fails the step.
#[test]
fn add_fetches_a_url_and_rebuilds_when_its_content_changes() {
    let Some(env) = busybox_env() else { return };
    let body = std::sync::Arc::new(std::sync::Mutex::new("first\n".to_string()));
    let web = loopback_web(body.clone());
    let dockerfile = format!(
        "FROM bb\nADD {web}/files/notes.txt /srv/\nADD {web}/files/other.txt /srv/renamed.txt\nRUN stat -c %a /srv/notes.txt\n"
    );
    env.write("ctx/Dockerfile", &dockerfile);
    let ctx = env.work().join("ctx");
    let out = build(&env, &[ctx.to_str().unwrap()]).success();
    // The RUN's output: the mode ADD gave the fetched file.
    assert!(
        out.stdout_text().lines().any(|l| l == "600"),
        "{}",
        out.stdout_text()
    );
    env.run(["cat", "/srv/notes.txt"])
        .success()
        .stdout("first\n");
    env.run(["cat", "/srv/renamed.txt"])
        .success()
        .stdout("first\n");
    // Unchanged: every step from the cache. Changed content: built again from the ADD.
    let again = build(&env, &[ctx.to_str().unwrap()]).success();
    assert_eq!(cache_hits(&again), 3, "{}", again.stderr_text());
    *body.lock().unwrap() = "second\n".to_string();
    let changed = build(&env, &[ctx.to_str().unwrap()]).success();
    assert_eq!(cache_hits(&changed), 0, "{}", changed.stderr_text());
    env.run(["cat", "/srv/notes.txt"])
        .success()
        .stdout("second\n");
    // Refused by the server: the step fails, named.
    env.write(
        "ctx/Dockerfile",
        format!("FROM bb\nADD {web}/missing /srv/\n"),
    );
    build(&env, &[ctx.to_str().unwrap()])
        .code(1)
        .stderr_contains("404");
}
