//! `-o junit`: a JUnit XML report of one `contree run`, for CI systems that read JUnit.
//!
//! The run is one testcase in one testsuite: it passes when the command exits 0, has a
//! `<failure>` when it exits non-zero (or is killed by a signal), and an `<error>` when it
//! times out or the operation itself fails. The command's output goes to `<system-out>` and
//! `<system-err>`, decoded as UTF-8 (invalid bytes become U+FFFD) with every character XML
//! 1.0 does not allow stripped. Nothing is written before the run finishes: the report is
//! one document on stdout.

use contree_plugin::{
    export_plugin, Emit, Formatter, FormatterDef, Plugin, RunInfo, RunResult, Stream,
};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct Junit {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    info: RunInfo,
    started: Option<u64>,
}

impl Formatter for Junit {
    fn begin(&mut self, info: &RunInfo) -> Result<Emit, String> {
        self.info = info.clone();
        self.started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        Ok(Emit::none())
    }

    fn chunk(&mut self, stream: Stream, bytes: &[u8]) -> Result<Emit, String> {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
        Ok(Emit::none())
    }

    fn finish(&mut self, result: &RunResult) -> Result<Emit, String> {
        Ok(Emit::stdout(report(
            &self.info,
            result,
            self.started,
            &self.stdout,
            &self.stderr,
        )))
    }
}

/// How the run ended, in JUnit's terms.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// `<failure>`: the command ran and reported failure.
    Failure {
        kind: &'static str,
        message: String,
    },
    /// `<error>`: the command could not finish (timeout, failed operation).
    Error {
        kind: &'static str,
        message: String,
    },
}

fn verdict(info: &RunInfo, result: &RunResult) -> Verdict {
    if result.timed_out() {
        let limit = info.request["timeout"]
            .as_u64()
            .map(|t| format!(" after {t}s"))
            .unwrap_or_default();
        return Verdict::Error {
            kind: "timeout",
            message: format!("timed out{limit}"),
        };
    }
    match result.exit_code() {
        Some(0) if result.status() == "SUCCESS" => Verdict::Pass,
        Some(code) if code < 0 => Verdict::Failure {
            kind: "signal",
            message: format!("killed by signal {}", -code),
        },
        Some(code) if code != 0 => Verdict::Failure {
            kind: "exit-code",
            message: format!("exit code {code}"),
        },
        _ => {
            let detail = match result.error() {
                "" => String::new(),
                e => format!(": {e}"),
            };
            Verdict::Error {
                kind: "operation",
                message: format!("operation {}{detail}", result.status()),
            }
        }
    }
}

/// The test case's name: the command line as it was given.
fn command_line(info: &RunInfo) -> String {
    let mut words = vec![info.request["command"].as_str().unwrap_or("").to_string()];
    if let Some(args) = info.request["args"].as_array() {
        words.extend(args.iter().filter_map(|a| a.as_str()).map(quote));
    }
    let line = words.join(" ");
    if line.trim().is_empty() {
        "contree run".into()
    } else {
        line
    }
}

fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn report(
    info: &RunInfo,
    result: &RunResult,
    started: Option<u64>,
    stdout: &[u8],
    stderr: &[u8],
) -> Vec<u8> {
    let verdict = verdict(info, result);
    let (failures, errors) = match verdict {
        Verdict::Pass => (0, 0),
        Verdict::Failure { .. } => (1, 0),
        Verdict::Error { .. } => (0, 1),
    };
    let time = format!("{:.3}", result.duration().max(0.0));
    let name = text(&command_line(info));
    let host = text(info.request["hostname"].as_str().unwrap_or("localhost"));
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"contree\" tests=\"1\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time}\">"
    );
    let _ = write!(
        x,
        "  <testsuite name=\"contree run\" tests=\"1\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{time}\""
    );
    if let Some(secs) = started {
        let _ = write!(x, " timestamp=\"{}\"", timestamp(secs));
    }
    let _ = writeln!(x, " hostname=\"{host}\">");
    x.push_str("    <properties>\n");
    let mut property = |name: &str, value: &str| {
        let _ = writeln!(
            x,
            "      <property name=\"{}\" value=\"{}\"/>",
            text(name),
            text(value)
        );
    };
    property("operation", result.op());
    property("status", result.status());
    property(
        "exit_code",
        &result
            .exit_code()
            .map(|c| c.to_string())
            .unwrap_or_default(),
    );
    property("image", info.request["image"].as_str().unwrap_or(""));
    property(
        "result_image",
        result.record["result_image_uuid"].as_str().unwrap_or(""),
    );
    property("backend", &info.backend);
    x.push_str("    </properties>\n");
    let _ = writeln!(
        x,
        "    <testcase name=\"{name}\" classname=\"contree.run\" time=\"{time}\">"
    );
    match &verdict {
        Verdict::Pass => {}
        Verdict::Failure { kind, message } => {
            let m = text(message);
            let _ = writeln!(
                x,
                "      <failure message=\"{m}\" type=\"{kind}\">{m}</failure>"
            );
        }
        Verdict::Error { kind, message } => {
            let m = text(message);
            let _ = writeln!(
                x,
                "      <error message=\"{m}\" type=\"{kind}\">{m}</error>"
            );
        }
    }
    let _ = writeln!(
        x,
        "      <system-out>{}</system-out>",
        text(&String::from_utf8_lossy(stdout))
    );
    let _ = writeln!(
        x,
        "      <system-err>{}</system-err>",
        text(&String::from_utf8_lossy(stderr))
    );
    x.push_str("    </testcase>\n  </testsuite>\n</testsuites>\n");
    x.into_bytes()
}

/// Characters XML 1.0 allows (§2.2 Char); everything else is dropped.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Escaped for both element content and double-quoted attributes, invalid characters gone.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Attribute values normalise literal tabs/newlines to spaces; keep them exact.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC (JUnit timestamps carry no zone).
fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

export_plugin!(Plugin {
    name: "junit",
    version: env!("CARGO_PKG_VERSION"),
    formatters: &[FormatterDef {
        name: "junit",
        live: false,
        new: || Box::new(Junit::default()),
    }],
    resolvers: &[],
});

#[cfg(test)]
#[path = "../../../tests/cli/skip.rs"]
mod skip;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skip::skip;
    use serde_json::json;
    use std::path::Path;
    use std::process::Command;

    fn info() -> RunInfo {
        RunInfo {
            op: "op-1".into(),
            request: json!({"image": "img", "command": "sh", "args": ["-c", "exit 3"], "hostname": "linuxkit", "timeout": 5}),
            backend: "local".into(),
        }
    }

    fn result(status: &str, exit: Option<i64>, timed_out: bool, error: &str) -> RunResult {
        RunResult {
            record: json!({
                "uuid": "op-1", "status": status, "duration": 1.25, "exit_code": exit,
                "result_image_uuid": null, "error": error,
                "metadata": {"result": {"state": {"exit_code": exit, "timed_out": timed_out}}},
            }),
        }
    }

    /// Validates against `plugins/junit/junit.xsd` with xmllint (libxml2-utils); where it is
    /// not installed, the test is reported skipped and false returned.
    pub fn valid(xml: &[u8]) -> bool {
        let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("junit.xsd");
        let dir = std::env::temp_dir().join(format!(
            "contree-junit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("report.xml");
        std::fs::write(&file, xml).unwrap();
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(&xsd)
            .arg(&file)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        match out {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "report is not valid JUnit:\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(xml)
                );
                true
            }
            Err(e) => {
                skip(&format!(
                    "xmllint not found ({e}): schema not checked (apt-get install libxml2-utils)"
                ));
                false
            }
        }
    }

    fn run(result: &RunResult, out: &[u8], err: &[u8]) -> String {
        let mut f = Junit::default();
        f.begin(&info()).unwrap();
        assert!(f.chunk(Stream::Stdout, out).unwrap().stdout.is_empty());
        f.chunk(Stream::Stderr, err).unwrap();
        let xml = f.finish(result).unwrap().stdout;
        valid(&xml);
        String::from_utf8(xml).unwrap()
    }

    #[test]
    fn a_passing_run_is_one_clean_testcase() {
        let xml = run(&result("SUCCESS", Some(0), false, ""), b"hi\n", b"");
        assert!(
            xml.contains("tests=\"1\" failures=\"0\" errors=\"0\""),
            "{xml}"
        );
        assert!(xml.contains("<testcase name=\"sh -c 'exit 3'\""), "{xml}");
        assert!(xml.contains("<system-out>hi&#10;</system-out>"), "{xml}");
        assert!(
            !xml.contains("<failure") && !xml.contains("<error"),
            "{xml}"
        );
    }

    #[test]
    fn a_non_zero_exit_is_a_failure() {
        let xml = run(&result("SUCCESS", Some(3), false, ""), b"", b"oops");
        assert!(xml.contains("failures=\"1\" errors=\"0\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"exit code 3\" type=\"exit-code\">"),
            "{xml}"
        );
        assert!(xml.contains("<system-err>oops</system-err>"), "{xml}");
        let xml = run(&result("SUCCESS", Some(-9), false, ""), b"", b"");
        assert!(xml.contains("killed by signal 9"), "{xml}");
    }

    #[test]
    fn a_timeout_or_failed_operation_is_an_error() {
        let xml = run(&result("SUCCESS", Some(-9), true, ""), b"", b"");
        assert!(xml.contains("failures=\"0\" errors=\"1\""), "{xml}");
        assert!(
            xml.contains("<error message=\"timed out after 5s\" type=\"timeout\">"),
            "{xml}"
        );
        let xml = run(&result("FAILED", None, false, "no <image>"), b"", b"");
        assert!(
            xml.contains(
                "<error message=\"operation FAILED: no &lt;image&gt;\" type=\"operation\">"
            ),
            "{xml}"
        );
    }

    #[test]
    fn characters_xml_cannot_hold_are_stripped_and_markup_is_escaped() {
        let xml = run(
            &result("SUCCESS", Some(0), false, ""),
            b"a\x00b\x1bc\x07 <&> \xff\xfe \"q\"\tend",
            b"",
        );
        assert!(
            xml.contains(
                "<system-out>abc &lt;&amp;&gt; \u{FFFD}\u{FFFD} &quot;q&quot;&#9;end</system-out>"
            ),
            "{xml}"
        );
        assert_eq!(text("\u{FFFE}\u{FFFF}\u{1F600}"), "\u{1F600}");
    }

    #[test]
    fn the_schema_check_rejects_what_ci_would_reject() {
        let bad = b"<?xml version=\"1.0\"?>\n<testsuites><testsuite name=\"s\" tests=\"1\" failures=\"0\" errors=\"0\"><testcase name=\"t\" time=\"1\"/></testsuite></testsuites>\n";
        if Command::new("xmllint").arg("--version").output().is_err() {
            skip("xmllint not found (apt-get install libxml2-utils)");
            return;
        }
        let checked = std::panic::catch_unwind(|| valid(bad));
        assert!(
            checked.is_err(),
            "a testcase without classname passed the schema"
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20");
    }
}
