//! Nothing is ever lost: a run reported done is in its session, whatever else runs, crashes
//! or recovers meanwhile, and a run whose changes could not be kept says so.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Holds an flock(2) on `path` from another process (util-linux `flock`), as a live owner
/// of a scratch entry does, until dropped.
struct Holder(Child);

impl Holder {
    fn new(path: &Path) -> Holder {
        // --no-fork: the holder is `sleep` itself, so killing it lets go.
        let child = Command::new("flock")
            .arg("--no-fork")
            .arg(path)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run util-linux flock");
        wait_until(Duration::from_secs(10), "the holder takes its lock", || {
            // `flock -n` fails while someone else holds the lock.
            !Command::new("flock")
                .args(["-n"])
                .arg(path)
                .arg("true")
                .status()
                .expect("run flock -n")
                .success()
        });
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn age(path: &Path, by: Duration) {
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(SystemTime::now() - by))
        .expect("set the mtime");
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn recovery_removes_abandoned_scratch_of_any_age_and_never_a_held_one() {
    let env = Env::host();
    let tmp = env.home().join("store/tmp");
    let abandoned = tmp.join("0b0e0b0e-0000-4000-8000-000000000001");
    let held = tmp.join("0b0e0b0e-0000-4000-8000-000000000002");
    let old_held = tmp.join("import-0b0e0b0e-0000-4000-8000-000000000003");
    for dir in [&abandoned, &held, &old_held] {
        std::fs::create_dir_all(dir.join("upper")).expect("scratch dir");
    }
    // Ages decide nothing: a fresh abandoned dir goes, an hour-old held one stays.
    age(&old_held, Duration::from_secs(3600));
    let holders = [Holder::new(&held), Holder::new(&old_held)];
    env.run(["ps"]).success();
    assert!(
        !abandoned.exists(),
        "an abandoned scratch dir survived recovery"
    );
    assert!(
        held.join("upper").is_dir(),
        "recovery removed a held scratch dir"
    );
    assert!(
        old_held.is_dir(),
        "recovery removed an old but held staging dir"
    );
    drop(holders);
    env.run(["ps"]).success();
    assert!(
        entries(&tmp).is_empty(),
        "left in tmp/: {:?}",
        entries(&tmp)
    );
}

#[test]
fn aged_spare_scratch_dirs_never_lose_a_run_while_other_commands_recover() {
    let env = Env::host();
    // Four runs at once leave four spare scratch dirs in the pool.
    let parallel: Vec<Running> = (0..4)
        .map(|_| env.cmd(["run", "-D", "--", "true"]).spawn())
        .collect();
    for run in parallel {
        run.wait().success();
    }
    // Supervisors give their scratch back after `completion`, just after `run` returns.
    let spare = env.home().join("store/spare");
    wait_until(
        Duration::from_secs(10),
        "runs leave spare scratch dirs",
        || !entries(&spare).is_empty(),
    );
    // Every other command recovers first; `ps` in a loop races each run for its scratch.
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) {
                env.run(["ps"]).success();
                rounds += 1;
            }
            rounds
        });
        runs_keep_their_files(&env, &spare);
        stop.store(true, Ordering::Relaxed);
        assert!(
            looping.join().expect("the ps loop") > 0,
            "the ps loop never ran"
        );
    });
    let all: String = (0..50).map(|i| format!("{i}\n")).collect();
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "for i in $(seq 0 49); do cat /root/f$i; done",
    ])
    .success()
    .stdout(&all);
}

/// 50 snapshotting runs, each on spare scratch dirs aged to look abandoned.
fn runs_keep_their_files(env: &Env, spare: &Path) {
    for i in 0..50 {
        for dir in entries(spare) {
            age(&dir, Duration::from_secs(600));
        }
        env.run(["run", "--", "sh", "-c", &format!("echo {i} > /root/f{i}")])
            .success()
            .stderr("");
    }
}

/// A read-only bind mount of `dir` onto itself, undone on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        for args in [
            vec!["--bind".into(), dir.to_owned(), dir.to_owned()],
            vec!["-o".into(), "remount,bind,ro".into(), dir.to_owned()],
        ] {
            let status = Command::new("mount")
                .args(args.iter().map(|a: &PathBuf| a.as_os_str()))
                .status()
                .expect("run mount");
            assert!(status.success(), "mount {args:?} failed");
        }
        ReadOnly(dir.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_snapshot_that_cannot_be_kept_never_exits_zero_and_says_so() {
    let env = Env::host();
    let before = env.session_image();
    let layers = env.home().join("store/layers");
    std::fs::create_dir_all(&layers).expect("layers dir");
    let out = {
        let _ro = ReadOnly::new(&layers);
        env.run(["run", "--", "sh", "-c", "echo kept? > /root/note"])
    };
    out.code(74)
        .stderr_contains("its changes were not kept (snapshot failed:")
        .stderr_contains("the session stays where it was");
    assert_eq!(env.session_image(), before, "the session moved");
    // Nothing half-made is left, and the next run works and keeps its changes.
    assert!(
        entries(&layers).is_empty(),
        "left in layers/: {:?}",
        entries(&layers)
    );
    env.run(["run", "--", "sh", "-c", "echo kept > /root/note"])
        .success();
    env.run(["cat", "/root/note"]).success().stdout("kept\n");
    // A command that failed keeps its own exit code, and still says what was lost.
    let _ro = ReadOnly::new(&layers);
    env.run(["run", "--", "sh", "-c", "echo x > /root/y; exit 3"])
        .code(3)
        .stderr_contains("its changes were not kept");
}

/// Starts `contree run -- sh -c SCRIPT` and SIGKILLs the CLI once the run is executing;
/// returns the operation's uuid.
fn run_and_kill_the_cli(env: &Env, script: &str) -> String {
    let mut cli = env.cmd(["run", "--", "sh", "-c", script]).spawn();
    let mut op = String::new();
    wait_until(Duration::from_secs(20), "the run is executing", || {
        op = env
            .run(["ps", "-q"])
            .success()
            .stdout_text()
            .trim()
            .to_string();
        !op.is_empty()
    });
    cli.child.kill().expect("SIGKILL the CLI");
    let _ = cli.child.wait();
    op
}

#[test]
fn a_run_whose_cli_is_killed_still_reaches_its_session_and_gc_keeps_it() {
    let env = Env::host();
    let op = run_and_kill_the_cli(&env, "sleep 2; echo done > /root/late");
    // Another session's gc, while the run is unapplied: its images stay.
    env.run(["-S", "other", "wait", &op]).success();
    let result = env.json(["-S", "other", "show", &op])["result_image_uuid"]
        .as_str()
        .expect("a result image")
        .to_string();
    let gc = env.run(["-S", "other", "-o", "json", "gc", "-n"]).success();
    assert!(
        !gc.stdout_text().contains(&result),
        "gc offers to free the run's result: {}",
        gc.stdout_text()
    );
    // The next command of the session applies it, once, as its CLI would have.
    env.run(["cat", "/root/late"])
        .success()
        .stdout("done\n")
        .stderr_contains(&format!("Applied run {op}"));
    assert_eq!(env.session_image(), result);
    env.run(["ls", "/root"]).success().stderr("");
    let history = env.run(["session", "show"]).success().stdout_text();
    assert_eq!(history.matches("/root/late").count(), 1, "{history}");
}

#[test]
fn a_run_that_ends_after_the_session_moved_on_gets_a_branch_of_its_own() {
    let env = Env::host();
    let op = run_and_kill_the_cli(&env, "sleep 2; echo first > /root/first");
    // A newer run on the same image, done before the first one.
    env.run(["run", "--", "sh", "-c", "echo second > /root/second"])
        .success();
    let newer = env.session_image();
    env.run(["wait", &op]).success();
    env.run(["ls", "/root"])
        .success()
        .stdout_contains("second")
        .stdout_lacks("first")
        .stderr_contains(&format!("is on branch 'detached-{op}'"));
    assert_eq!(
        env.session_image(),
        newer,
        "the newer run's work moved away"
    );
    env.run(["session", "checkout", &format!("detached-{op}")])
        .success();
    env.run(["cat", "/root/first"]).success().stdout("first\n");
}

#[test]
fn a_failed_run_whose_cli_died_is_reported_by_the_next_command() {
    let env = Env::host();
    let before = env.session_image();
    let op = run_and_kill_the_cli(&env, "sleep 2; echo x > /root/x; exit 3");
    env.run(["-S", "other", "kill", &op]).success();
    env.run(["-S", "other", "wait", &op]).code(1);
    env.run(["ls", "/"]).success().stderr_contains(&format!(
        "Run {op} (sh -c sleep 2; echo x > /root/x; exit 3) ended CANCELLED"
    ));
    assert_eq!(env.session_image(), before);
    // Said once: the run is off the pending list.
    env.run(["ls", "/"]).success().stderr("");
}

/// A tmpfs of `size` mounted on a fresh dir of the system temp dir, unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("contree-small-disk-")
            .tempdir()
            .expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs failed");
        SmallDisk(dir)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_keeps_nothing_half_written_never_hangs_and_recovers_once_space_is_freed() {
    let disk = SmallDisk::new("40m");
    let env = Env::with_home_in(disk.path());
    env.use_host();
    env.run(["run", "--", "sh", "-c", "echo before > /root/before"])
        .success();
    let before = env.session_image();

    // A run that fills the disk: the command sees ENOSPC, its changes are not kept, and the
    // space comes back.
    env.run([
        "run",
        "--",
        "sh",
        "-c",
        "head -c 60000000 /dev/zero > /root/big",
    ])
    .code(1)
    .stderr_contains("its changes were not kept (snapshot failed:")
    .stderr_contains("the session stays where it was");
    assert_eq!(env.session_image(), before);
    env.run(["run", "--", "sh", "-c", "echo after > /root/after"])
        .success();

    // An attachment and an import that do not fit: nothing of them is kept.
    let big = env.write("big", vec![0u8; 60_000_000]);
    env.run([
        "run",
        "-F",
        &format!("{}:/big", big.display()),
        "--",
        "true",
    ])
    .code(74)
    .stderr_contains("the store's disk is full")
    .stderr_contains(&format!("the content of {} was not kept", big.display()));
    let rootfs = env.work().join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    std::fs::rename(&big, rootfs.join("big")).expect("move into the rootfs");
    env.run([
        "images",
        "import",
        &rootfs.display().to_string(),
        "--tag",
        "big",
    ])
    .code(74)
    .stderr_contains("writing the store failed")
    .stderr_contains("nothing was imported");
    env.run(["images"]).success().stdout_lacks("big");

    // Filled from outside: reads work at once, runs fail clearly and change nothing.
    let filler = disk.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 60_000_000]);
    env.run(["cat", "/root/after"]).success().stdout("after\n");
    env.run(["images"]).success();
    env.run(["session", "show"]).success();
    env.run(["run", "-D", "--", "echo", "hi"])
        .code(74)
        .stderr_contains("full");
    env.run(["run", "--", "sh", "-c", "echo lost > /root/lost"])
        .code(74)
        .stderr_contains("full");
    std::fs::remove_file(&filler).expect("free the space");

    // Space freed: runs work again, and the store is whole.
    env.run(["run", "--", "sh", "-c", "echo again > /root/again"])
        .success();
    env.run(["ls", "/root"])
        .success()
        .stdout_contains("before")
        .stdout_contains("after")
        .stdout_contains("again")
        .stdout_lacks("big")
        .stdout_lacks("lost");
    env.run(["doctor"]).success().stdout_lacks("problem");
}
