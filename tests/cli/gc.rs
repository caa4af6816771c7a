//! `contree gc` and `images rm`: exactly the unreferenced images, layers and blobs go;
//! nothing a tag, a session or a running operation uses is ever removed.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::Env;

fn layers(env: &Env) -> BTreeSet<String> {
    std::fs::read_dir(env.home().join("store/layers"))
        .expect("list layers")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `-o json gc ARGS` records as (kind, id).
fn gc(env: &Env, args: &[&str]) -> BTreeSet<(String, String)> {
    let mut all = vec!["-o", "json", "gc"];
    all.extend_from_slice(args);
    env.run(all)
        .success()
        .json_lines()
        .iter()
        .map(|r: &Value| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn as_session(env: &Env, key: &str, args: &[&str]) -> crate::harness::Output {
    env.cmd(args).env("CONTREE_SESSION", key).output()
}

fn image_of(env: &Env, key: &str) -> String {
    as_session(env, key, &["-o", "json", "use"]).json()["current_image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn gc_frees_exactly_what_a_deleted_session_left_behind() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo t > /tmp/t"])
        .success();
    let kept = layers(&env);
    as_session(&env, "o", &["use", "host"]).success();
    as_session(&env, "o", &["run", "--", "sh", "-c", "echo o > /tmp/o"]).success();
    let o_image = image_of(&env, "o");
    let o_layers: BTreeSet<String> = layers(&env).difference(&kept).cloned().collect();
    assert_eq!(o_layers.len(), 1, "one run, one layer");

    // Still referenced by session `o`: nothing to free.
    assert!(gc(&env, &["--dry-run"]).is_empty());
    as_session(&env, "o", &["session", "delete", "-f", "o"]).success();

    let expected: BTreeSet<(String, String)> = o_layers
        .iter()
        .map(|l| ("layer".to_string(), l.clone()))
        .chain([("image".to_string(), o_image.clone())])
        .collect();
    assert_eq!(gc(&env, &["-n"]), expected, "the dry run names them");
    assert_eq!(layers(&env).len(), kept.len() + 1, "and removes nothing");
    env.run(["gc", "--dry-run"])
        .success()
        .stderr_contains("Would free 1 images, 1 layers");

    assert_eq!(gc(&env, &[]), expected);
    assert_eq!(layers(&env), kept);
    assert!(gc(&env, &[]).is_empty(), "a second gc finds nothing");
    env.run(["images", "-a"]).success().stdout_lacks(&o_image);
    // The session's own image is intact.
    env.run(["cat", "/tmp/t"]).success().stdout("t\n");
    env.run(["run", "--", "cat", "/tmp/t"])
        .success()
        .stdout("t\n");
}

#[test]
fn gc_keeps_tagged_images_and_what_a_running_operation_uses() {
    let env = Env::host();
    // An image only a tag keeps.
    as_session(&env, "tagged", &["use", "host"]).success();
    as_session(
        &env,
        "tagged",
        &["run", "--", "sh", "-c", "echo x > /tmp/x"],
    )
    .success();
    as_session(&env, "tagged", &["tag", "keepme"]).success();
    let tagged = image_of(&env, "tagged");
    as_session(&env, "tagged", &["session", "delete", "-f", "tagged"]).success();

    // An image only a running operation keeps.
    as_session(&env, "busy", &["use", "host"]).success();
    as_session(&env, "busy", &["run", "--", "sh", "-c", "echo y > /tmp/y"]).success();
    let busy = image_of(&env, "busy");
    let token = crate::harness::unique_token();
    as_session(
        &env,
        "busy",
        &[
            "run",
            "-d",
            "--",
            "sh",
            "-c",
            &format!("sleep 60 # {token}"),
        ],
    )
    .success();
    let op = env.last_op();
    as_session(&env, "busy", &["session", "delete", "-f", "busy"]).success();

    let before = layers(&env);
    let freed = gc(&env, &[]);
    assert!(
        freed.iter().all(|(_, id)| *id != tagged && *id != busy),
        "{freed:?}"
    );
    assert_eq!(layers(&env), before, "no layer of a kept image goes");
    env.run(["run", "--use", "tag:keepme", "--", "cat", "/tmp/x"])
        .success()
        .stdout("x\n");

    env.run(["kill", &op]).success();
    env.run(["op", "wait", &op]).check("finished", |_| true);
    let freed = gc(&env, &[]);
    assert!(freed.contains(&("image".to_string(), busy)), "{freed:?}");
    assert!(layers(&env).len() < before.len());
}

#[test]
fn images_rm_removes_an_unused_image_and_refuses_a_used_one() {
    let env = Env::host();
    env.run(["run", "--", "sh", "-c", "echo a > /tmp/a"])
        .success();
    let mine = env.session_image();
    env.run(["images", "rm", &mine])
        .code(1)
        .stderr_contains("is used by session 't'");
    env.run(["images", "rm", "tag:host"]).code(1);

    as_session(&env, "o", &["use", "host"]).success();
    as_session(&env, "o", &["run", "--", "sh", "-c", "echo o > /tmp/o"]).success();
    let theirs = image_of(&env, "o");
    as_session(&env, "o", &["tag", "theirs"]).success();
    as_session(&env, "o", &["session", "delete", "-f", "o"]).success();
    let before = layers(&env);
    let out = env.run(["-o", "json", "images", "rm", "theirs"]).success();
    let freed: Vec<Value> = out.json_lines();
    assert_eq!(freed.iter().filter(|r| r["kind"] == "image").count(), 1);
    assert_eq!(freed.iter().filter(|r| r["kind"] == "layer").count(), 1);
    assert_eq!(layers(&env).len(), before.len() - 1);
    env.run(["images", "-a"]).success().stdout_lacks(&theirs);
    env.run(["images", "rm", &theirs])
        .code(1)
        .stderr_contains("not found");
    env.run(["cat", "/tmp/a"]).success().stdout("a\n");
}

#[test]
fn gc_frees_attachment_blobs_nothing_stages_and_runs_still_attach() {
    let env = Env::host();
    let file = env.write("data.txt", "payload\n");
    let spec = format!("{}:/tmp/data.txt", file.display());
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    let freed = gc(&env, &[]);
    assert_eq!(
        freed.iter().filter(|(k, _)| k == "blob").count(),
        1,
        "{freed:?}"
    );
    // The committed image keeps its attachment layer (and the file in it).
    env.run(["cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    // The blob is stored again when a run attaches the file anew, on top of an image that
    // already holds its attachment layer, also after a run changed the file.
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    env.run(["run", "--", "sh", "-c", "echo changed > /tmp/data.txt"])
        .success();
    env.run(["run", "-F", &spec, "--", "cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
    env.run(["cat", "/tmp/data.txt"])
        .success()
        .stdout("payload\n");
}
