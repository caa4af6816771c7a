//! The search over small layer chains built in a temp dir.
use super::super::layers::{make_whiteout, set_opaque};
use super::super::store::Layout;
use super::*;
use std::fs;

/// An image of two layers: `low` below `top`, which whites out and hides some of it.
fn image() -> (tempfile::TempDir, View) {
    let (t, l) = Layout::temp();
    let (low, top) = (l.layer_dir("low"), l.layer_dir("top"));
    fs::create_dir_all(low.join("etc/conf.d")).unwrap();
    fs::create_dir_all(low.join("old")).unwrap();
    fs::write(
        low.join("etc/app.conf"),
        "# app\nPort 22\nListen any\nport 80\n",
    )
    .unwrap();
    fs::write(low.join("etc/conf.d/a.conf"), "Port 1\n").unwrap();
    fs::write(low.join("etc/gone.conf"), "Port 99\n").unwrap();
    fs::write(low.join("old/stale"), "Port 7\n").unwrap();
    fs::create_dir_all(top.join("etc")).unwrap();
    make_whiteout(&top.join("etc/gone.conf")).unwrap();
    fs::create_dir_all(top.join("old")).unwrap();
    set_opaque(&top.join("old")).unwrap();
    fs::write(top.join("old/new"), "Port 8\n").unwrap();
    fs::write(
        top.join("etc/notes.txt"),
        "nothing here\n  Port 5, indented\n",
    )
    .unwrap();
    let view = View::new(&l, &["top".into(), "low".into()]);
    (t, view)
}

/// An image of one layer, whose directory `fill` fills.
fn one_layer(fill: impl FnOnce(&Path)) -> (tempfile::TempDir, View) {
    let (t, l) = Layout::temp();
    let d = l.layer_dir("one");
    fs::create_dir_all(&d).unwrap();
    fill(&d);
    (t, View::new(&l, &["one".into()]))
}

/// An image of one layer holding `files` (path, text), their parent directories made.
fn one_layer_of(files: &[(&str, &str)]) -> (tempfile::TempDir, View) {
    one_layer(|d| {
        for (path, text) in files {
            let path = d.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    })
}

fn request(patterns: &[&str]) -> GrepRequest {
    GrepRequest {
        patterns: patterns.iter().map(|p| p.to_string()).collect(),
        ..GrepRequest::default()
    }
}

fn grep(view: &View, req: &GrepRequest) -> GrepResult {
    search(view, req, Instant::now() + DEADLINE).unwrap()
}

/// `path:line:text` of each row, `-` instead of `:` for context (as grep prints them).
fn lines(r: &GrepResult) -> Vec<String> {
    r.matches
        .iter()
        .map(|m| {
            let sep = match m.kind {
                GrepLineKind::Match => ':',
                GrepLineKind::Context => '-',
            };
            format!(
                "{}{sep}{}{sep}{}",
                m.path,
                m.line_number,
                m.line_text.trim_end()
            )
        })
        .collect()
}

#[test]
fn whiteouts_and_opaque_directories_hide_files_from_the_search() {
    let (_t, view) = image();
    let r = grep(&view, &request(&["^Port"]));
    assert_eq!(
        lines(&r),
        [
            "/etc/app.conf:2:Port 22",
            "/etc/conf.d/a.conf:1:Port 1",
            "/old/new:1:Port 8",
        ]
    );
    assert!(!r.truncated);
    assert_eq!(r.path, "/");
    assert_eq!(r.patterns, ["^Port"]);
}

#[test]
fn patterns_are_or_ed_and_rows_carry_offsets_and_submatches() {
    let (_t, view) = image();
    let mut req = request(&["Listen", "^port"]);
    req.paths = vec!["/etc/app.conf".into()];
    let r = grep(&view, &req);
    assert_eq!(
        lines(&r),
        ["/etc/app.conf:3:Listen any", "/etc/app.conf:4:port 80"]
    );
    let first = &r.matches[0];
    assert_eq!(first.absolute_offset, "# app\nPort 22\n".len() as u64);
    assert_eq!(first.line_text, "Listen any\n");
    assert_eq!(first.line_bytes, 11);
    assert_eq!(
        first.submatches,
        [GrepSubmatch {
            text: "Listen".into(),
            start: 0,
            end: 6
        }]
    );
    let json = serde_json::to_value(&r.matches[1]).unwrap();
    assert_eq!(json["type"], "match");
    assert_eq!(json["absolute_offset"], 25);
}

#[test]
fn case_is_sensitive_insensitive_or_smart() {
    let (_t, view) = image();
    let count = |pattern: &str, case: Option<&str>| {
        let mut req = request(&[pattern]);
        req.paths = vec!["/etc/app.conf".into()];
        req.case = case.map(str::to_string);
        grep(&view, &req).matches.len()
    };
    assert_eq!(count("port", None), 1);
    assert_eq!(count("port", Some("sensitive")), 1);
    assert_eq!(count("port", Some("insensitive")), 2);
    assert_eq!(count("port", Some("smart")), 2, "lower case: insensitive");
    assert_eq!(
        count("Port", Some("smart")),
        1,
        "an upper case letter: sensitive"
    );
}

#[test]
fn context_rows_come_around_matches_without_submatches() {
    let (_t, view) = image();
    let mut req = request(&["Listen"]);
    req.paths = vec!["/etc/app.conf".into()];
    req.before = Some(2);
    req.after = Some(1);
    let r = grep(&view, &req);
    assert_eq!(
        lines(&r),
        [
            "/etc/app.conf-1-# app",
            "/etc/app.conf-2-Port 22",
            "/etc/app.conf:3:Listen any",
            "/etc/app.conf-4-port 80",
        ]
    );
    assert!(r.matches[0].submatches.is_empty());
    assert_eq!(r.matches[3].absolute_offset, 25);
    let json = serde_json::to_value(&r.matches[0]).unwrap();
    assert_eq!(json["type"], "context");
}

#[test]
fn max_count_bounds_each_file_and_max_total_the_search() {
    let (_t, view) = one_layer_of(&[("d/a", "x1\nx2\nx3\n"), ("d/b", "x4\nx5\n")]);
    let mut req = request(&["x"]);
    req.max_count = Some(1);
    let r = grep(&view, &req);
    assert_eq!(lines(&r), ["/d/a:1:x1", "/d/b:1:x4"]);
    assert!(!r.truncated, "max_count does not truncate");

    let mut req = request(&["x"]);
    req.max_total = Some(4);
    req.before = Some(1);
    let r = grep(&view, &req);
    assert_eq!(
        lines(&r),
        ["/d/a:1:x1", "/d/a:2:x2", "/d/a:3:x3", "/d/b:1:x4"]
    );
    assert!(r.truncated);
    // Exactly as many matches as allowed: nothing was left out.
    req.max_total = Some(5);
    assert!(!grep(&view, &req).truncated);

    // Several roots in the order given, sharing the budget.
    let mut req = request(&["x"]);
    req.paths = vec!["/d/b".into(), "/d/a".into()];
    req.max_total = Some(3);
    let r = grep(&view, &req);
    assert_eq!(lines(&r), ["/d/b:1:x4", "/d/b:2:x5", "/d/a:1:x1"]);
    assert!(r.truncated);
    assert_eq!(r.path, "/d/b");
}

#[test]
fn a_past_deadline_stops_the_search_as_truncated() {
    let (_t, view) = image();
    let r = search(&view, &request(&["Port"]), Instant::now()).unwrap();
    assert!(r.matches.is_empty());
    assert!(r.truncated);
}

#[test]
fn binary_files_are_skipped_and_symlinks_not_followed() {
    let (_t, view) = one_layer(|d| {
        fs::create_dir_all(d.join("data/real")).unwrap();
        let mut binary = b"needle at the start\n".to_vec();
        binary.extend(vec![b'a'; 200_000]);
        binary.extend(b"\0needle after the NUL\n");
        fs::write(d.join("data/blob.bin"), binary).unwrap();
        fs::write(d.join("data/real/text"), "needle\n").unwrap();
        std::os::unix::fs::symlink("real", d.join("data/link")).unwrap();
        std::os::unix::fs::symlink("real/text", d.join("data/file-link")).unwrap();
        std::os::unix::fs::symlink("/data", d.join("alias")).unwrap();
    });
    assert_eq!(
        lines(&grep(&view, &request(&["needle"]))),
        ["/data/real/text:1:needle"]
    );
    // A root that is a symlink is resolved inside the image, as `list` does.
    let mut req = request(&["needle"]);
    req.paths = vec!["/alias".into(), "/data/file-link".into()];
    assert_eq!(
        lines(&grep(&view, &req)),
        ["/data/real/text:1:needle", "/data/real/text:1:needle"]
    );
}

#[test]
fn hidden_files_are_searched_and_gitignore_files_mean_nothing() {
    let (_t, view) = one_layer_of(&[
        ("repo/.gitignore", "ignored.txt\n.secret\n"),
        ("repo/.ignore", "*\n"),
        ("repo/.secret", "token=1\n"),
        ("repo/ignored.txt", "token=2\n"),
        ("repo/.git/config", "token=3\n"),
    ]);
    assert_eq!(
        lines(&grep(&view, &request(&["token"]))),
        [
            "/repo/.git/config:1:token=3",
            "/repo/.secret:1:token=1",
            "/repo/ignored.txt:1:token=2",
        ]
    );
}

#[test]
fn globs_filter_as_ripgrep_g_does() {
    let (_t, view) = one_layer_of(&[
        ("srv/a.conf", "hit\n"),
        ("srv/b.txt", "hit\n"),
        ("srv/sub/c.conf", "hit\n"),
        ("srv/sub/deep/d.conf", "hit\n"),
        ("srv/skip/e.conf", "hit\n"),
    ]);
    let paths = |globs: &[&str]| -> Vec<String> {
        let mut req = request(&["hit"]);
        req.paths = vec!["/srv".into()];
        req.globs = globs.iter().map(|g| g.to_string()).collect();
        grep(&view, &req)
            .matches
            .into_iter()
            .map(|m| m.path)
            .collect()
    };
    // No slash: the file name, at any depth.
    assert_eq!(
        paths(&["*.conf"]),
        [
            "/srv/a.conf",
            "/srv/skip/e.conf",
            "/srv/sub/c.conf",
            "/srv/sub/deep/d.conf"
        ]
    );
    // `!` excludes; only excluding globs let everything else through.
    assert_eq!(paths(&["!*.conf"]), ["/srv/b.txt"]);
    // A directory excluded is not entered; the last glob that matches decides.
    assert_eq!(
        paths(&["*.conf", "!skip", "!sub/deep/*"]),
        ["/srv/a.conf", "/srv/sub/c.conf"]
    );
    // Once a glob includes, a file no glob matches is left out.
    assert_eq!(paths(&["!*.conf", "a.conf"]), ["/srv/a.conf"]);
    // With a slash, relative to the search root; `*` stops at a slash, `**` does not.
    assert_eq!(paths(&["sub/*.conf"]), ["/srv/sub/c.conf"]);
    assert_eq!(paths(&["/*.conf"]), ["/srv/a.conf"]);
    assert_eq!(
        paths(&["sub/**"]),
        ["/srv/sub/c.conf", "/srv/sub/deep/d.conf"]
    );
    // A trailing slash matches directories only.
    assert_eq!(
        paths(&["!sub/"]),
        ["/srv/a.conf", "/srv/b.txt", "/srv/skip/e.conf"]
    );
}

#[test]
fn long_lines_are_capped_and_say_their_real_length() {
    // A two-byte character straddles the cap.
    let line = format!("{}é{}needle\n", "x".repeat(LINE_CAP - 1), "y".repeat(5000));
    let (_t, view) = one_layer_of(&[("long", &format!("needle first\n{line}"))]);
    let mut req = request(&["needle", "^x"]);
    req.paths = vec!["/long".into()];
    let r = grep(&view, &req);
    let long = &r.matches[1];
    assert_eq!(long.line_bytes, line.len() as u64);
    assert_eq!(long.line_text, "x".repeat(LINE_CAP - 1));
    assert_eq!(long.absolute_offset, 13);
    // Only the submatches within the text shown are listed.
    assert_eq!(long.submatches.len(), 1);
    assert_eq!(long.submatches[0].start, 0);
}

#[test]
fn bad_requests_are_typed_errors_and_a_missing_root_is_not_found() {
    let (_t, view) = image();
    let refused = |req: GrepRequest| search(&view, &req, Instant::now() + DEADLINE).unwrap_err();
    assert!(matches!(refused(request(&[])), GrepError::NoPattern));
    assert!(matches!(
        refused(request(&["a"; 17])),
        GrepError::TooManyPatterns(17)
    ));
    let long = "a".repeat(1025);
    assert!(matches!(
        refused(request(&[long.as_str()])),
        GrepError::PatternTooLong {
            index: 1,
            chars: 1025
        }
    ));
    assert!(matches!(refused(request(&["("])), GrepError::Regex(_)));
    let with = |f: &dyn Fn(&mut GrepRequest)| {
        let mut req = request(&["Port"]);
        f(&mut req);
        refused(req)
    };
    assert!(matches!(
        with(&|r| r.case = Some("upper".into())),
        GrepError::Case(_)
    ));
    assert!(matches!(
        with(&|r| r.paths = vec!["etc".into()]),
        GrepError::BadPath(_)
    ));
    assert!(matches!(
        with(&|r| r.paths = vec!["/".into(); 17]),
        GrepError::TooManyPaths(17)
    ));
    assert!(matches!(
        with(&|r| r.globs = vec!["a[".into()]),
        GrepError::Glob { .. }
    ));
    for (name, f) in [
        (
            "max_count",
            &(|r: &mut GrepRequest| r.max_count = Some(0)) as &dyn Fn(&mut GrepRequest),
        ),
        ("max_count", &|r| r.max_count = Some(10_001)),
        ("max_total", &|r| r.max_total = Some(10_001)),
        ("before", &|r| r.before = Some(51)),
        ("after", &|r| r.after = Some(51)),
    ] {
        match with(f) {
            GrepError::OutOfRange { name: n, .. } => assert_eq!(n, name),
            other => panic!("{name}: {other}"),
        }
    }
    assert!(matches!(
        with(&|r| r.paths = vec!["/etc".into(), "/nowhere".into()]),
        GrepError::Inspect(InspectError::NotFound(_))
    ));
    assert!(matches!(
        crate::backend::BackendError::from(with(&|r| r.paths = vec!["/nowhere".into()])),
        crate::backend::BackendError::NotFound(_)
    ));
    assert!(matches!(
        crate::backend::BackendError::from(refused(request(&["("]))),
        crate::backend::BackendError::Invalid(_)
    ));
}
