//! Records and the built-in output formats (`-o default|table|json|json-pretty|csv|tsv|plain|toml`).
//!
//! Every command hands its results here as *records*: insertion-ordered JSON objects. This
//! module decides how they look on stdout; it never decides *what* a command reports and
//! never writes to stderr.
//! Framing follows run-behaviour.md §7, with the deliberate differences noted inline.

pub mod formatter;

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::{CommandError, CommandResult, Kind};

/// One output row: keys keep their insertion order (`serde_json` is built with
/// `preserve_order`), which is the column order the user sees.
pub type Record = Map<String, Value>;

/// The record a `json!({...})` object makes, its fields in the order written.
pub fn record(object: Value) -> Record {
    let Value::Object(fields) = object else {
        panic!("a record is made from a JSON object, not {object}");
    };
    fields
}

/// The output formats built into the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `table`, unless a command special-cases it (run, show, ls, session branch).
    Default,
    Table,
    Json,
    JsonPretty,
    Csv,
    Tsv,
    /// `key: value` lines, keys padded to the widest, records separated by `---`.
    Plain,
    /// One `[[results]]` table per record: a TOML document with an array of tables.
    Toml,
}

impl Format {
    /// The name accepted by `-o`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Default => "default",
            Format::Table => "table",
            Format::Json => "json",
            Format::JsonPretty => "json-pretty",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Plain => "plain",
            Format::Toml => "toml",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format '{0}' (expected default, table, json, json-pretty, csv, tsv, plain or toml)")]
    Unknown(String),
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "default" => Format::Default,
            "table" => Format::Table,
            "json" => Format::Json,
            "json-pretty" => Format::JsonPretty,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "plain" => Format::Plain,
            "toml" => Format::Toml,
            other => return Err(FormatError::Unknown(other.to_string())),
        })
    }
}

/// Reorders `rec`: the `head` keys first (in the order given), then every other key in its
/// original order, then the `tail` keys (in the order given). Keys named in `head`/`tail`
/// but absent from the record are skipped; a key named in both stays in the head.
pub fn record_order(mut rec: Record, head: &[&str], tail: &[&str]) -> Record {
    let mut out = Record::new();
    for k in head {
        if let Some(v) = rec.shift_remove(*k) {
            out.insert((*k).to_string(), v);
        }
    }
    // Pull the tail out before copying the middle so the middle keeps its relative order.
    let mut tail_vals = Vec::with_capacity(tail.len());
    for k in tail {
        if let Some(v) = rec.shift_remove(*k) {
            tail_vals.push(((*k).to_string(), v));
        }
    }
    for (k, v) in rec {
        out.insert(k, v);
    }
    for (k, v) in tail_vals {
        out.insert(k, v);
    }
    out
}

/// Writes `records` in `format`. `tty` says whether `out` is a terminal (tables are padded
/// only then). Zero records print nothing in every format.
pub fn write_records(
    out: &mut dyn Write,
    format: Format,
    records: &[Record],
    tty: bool,
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    match format {
        Format::Default | Format::Table => write_table(out, records, tty),
        Format::Csv => write_delimited(out, records, ','),
        Format::Tsv => write_delimited(out, records, '\t'),
        Format::Plain => write_plain(out, records),
        Format::Toml => write_toml(out, records),
        Format::Json => {
            for rec in records {
                let line = serde_json::to_string(&json_record(rec)).map_err(io::Error::other)?;
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Format::JsonPretty => {
            let all: Vec<Value> = records
                .iter()
                .map(|r| Value::Object(json_record(r)))
                .collect();
            // serde_json's pretty printer uses two-space indentation, so the array renders as
            // `[`, records indented by 2 and separated by `,\n`, then `]`.
            let text = serde_json::to_string_pretty(&all).map_err(io::Error::other)?;
            out.write_all(text.as_bytes())?;
            out.write_all(b"\n")
        }
    }
}

/// Prints `records` on stdout in `format` (tables are padded when stdout is a terminal).
pub fn print_records(format: Format, records: &[Record]) -> CommandResult {
    let tty = std::io::stdout().is_terminal();
    to_stdout(|out| write_records(out, format, records, tty))
}

/// Writes to stdout with `write`, then flushes. A reader that went away (`| head`) is not an
/// error: it has what it wanted.
pub fn to_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> CommandResult {
    let mut stdout = std::io::stdout().lock();
    match write(&mut stdout).and_then(|_| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(CommandError::new(Kind::Io, format!("writing output: {e}")))
        }
        _ => Ok(()),
    }
}

/// JSON formats keep values as they are, except that a null `error` or `tag` is shown as ""
/// (the official client does the same, and scripts test `error == ""`).
fn json_record(rec: &Record) -> Record {
    let mut out = rec.clone();
    for key in ["error", "tag"] {
        if let Some(v) = out.get_mut(key) {
            if v.is_null() {
                *v = Value::String(String::new());
            }
        }
    }
    out
}

/// Column names: the union of all records' keys in order of first appearance. The official
/// client takes only the first record's keys, so later extra keys vanish and CSV rows can
/// misalign (run-behaviour.md §10.19); taking the union fixes both.
fn columns(records: &[Record]) -> Vec<&str> {
    let mut cols: Vec<&str> = Vec::new();
    for rec in records {
        for k in rec.keys() {
            if !cols.contains(&k.as_str()) {
                cols.push(k);
            }
        }
    }
    cols
}

fn rows(records: &[Record], cols: &[&str]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|rec| {
            cols.iter()
                .map(|c| rec.get(*c).map(|v| render_cell(c, v)).unwrap_or_default())
                .collect()
        })
        .collect()
}

/// Tables carry no colour, so `NO_COLOR` needs no handling here, and a TTY table is padded
/// but never truncated: dropping or ellipsising columns to fit the terminal (as the official
/// client does) would hide data.
fn write_table(out: &mut dyn Write, records: &[Record], tty: bool) -> io::Result<()> {
    let cols = columns(records);
    let header: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    let body = rows(records, &cols);
    let widths: Vec<usize> = if tty {
        (0..cols.len())
            .map(|i| {
                std::iter::once(&header)
                    .chain(body.iter())
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    } else {
        Vec::new()
    };
    for row in std::iter::once(&header).chain(body.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            // Pad every column but the last, so lines carry no trailing blanks.
            if tty && i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

fn write_delimited(out: &mut dyn Write, records: &[Record], sep: char) -> io::Result<()> {
    let cols = columns(records);
    let header: Vec<String> = cols.iter().map(|c| (*c).to_string()).collect();
    let body = rows(records, &cols);
    for row in std::iter::once(&header).chain(body.iter()) {
        let mut line = String::new();
        if row.len() == 1 && row[0].is_empty() {
            // A lone empty field would be an empty line, which CSV readers skip; quoting it
            // keeps the row (Python's csv module does the same).
            line.push_str("\"\"");
        } else {
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push(sep);
                }
                push_csv_field(&mut line, cell, sep);
            }
        }
        line.push_str("\r\n");
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// `key: value` blocks. A multi-line value continues under its first line, indented to the
/// values' column, so every line of a block still reads as belonging to its key.
fn write_plain(out: &mut dyn Write, records: &[Record]) -> io::Result<()> {
    for (i, rec) in records.iter().enumerate() {
        if i > 0 {
            out.write_all(b"---\n")?;
        }
        let width = rec.keys().map(|k| k.chars().count()).max().unwrap_or(0) + 2;
        let mut block = String::new();
        for (key, value) in rec {
            let label = format!("{key}:");
            let text = render_cell(key, value);
            let mut lines = text.split('\n');
            let _ = writeln!(block, "{label:<width$}{}", lines.next().unwrap_or_default());
            for line in lines {
                let _ = writeln!(block, "{:width$}{line}", "");
            }
        }
        out.write_all(block.as_bytes())?;
    }
    Ok(())
}

/// A TOML document `{ results = [record, ...] }`, which the toml crate prints as one
/// `[[results]]` table per record. Values keep their types, nested ones included (the
/// official client flattens those to strings); TOML has no null, so a null is `""`.
fn write_toml(out: &mut dyn Write, records: &[Record]) -> io::Result<()> {
    let results: Vec<toml::Value> = records
        .iter()
        .map(|rec| toml_value(&Value::Object(json_record(rec))))
        .collect();
    let mut doc = toml::Table::new();
    doc.insert("results".into(), toml::Value::Array(results));
    let text = toml::to_string(&doc).map_err(io::Error::other)?;
    out.write_all(text.as_bytes())
}

fn toml_value(value: &Value) -> toml::Value {
    match value {
        Value::Null => toml::Value::String(String::new()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            // u64 past i64::MAX, and floats: TOML integers are 64-bit signed.
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().map(toml_value).collect()),
        Value::Object(fields) => toml::Value::Table(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), toml_value(v)))
                .collect(),
        ),
    }
}

/// RFC 4180 minimal quoting: quote a field containing the separator, a quote, CR or LF, and
/// double the quotes inside it.
fn push_csv_field(line: &mut String, cell: &str, sep: char) {
    if cell.contains([sep, '"', '\r', '\n']) {
        line.push('"');
        line.push_str(&cell.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(cell);
    }
}

/// Renders one value for the tabular formats. `key` selects field-based typing: numeric
/// `duration`s are shown as intervals. Strings (timestamps included) are printed verbatim:
/// the official client re-renders naive UTC timestamps as local time (§10.15), which this
/// port does not copy.
pub fn render_cell(key: &str, value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if key == "duration" => match n.as_f64() {
            Some(secs) => format_interval(secs),
            None => n.to_string(),
        },
        Value::Number(n) => {
            if n.is_f64() {
                n.as_f64()
                    .map(|f| format!("{f:.2}"))
                    .unwrap_or_else(|| n.to_string())
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.clone(),
        // Compact JSON keeps nested values on one line and machine-readable.
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

/// A duration in seconds as a short interval: `0.12s`, `42s`, `3m5s`, `2h10m`, `3d4h`.
/// Sub-second values keep two decimals; longer ones are truncated to whole units, since an
/// elapsed time should never be shown as longer than it was.
pub fn format_interval(secs: f64) -> String {
    if !secs.is_finite() {
        return secs.to_string();
    }
    let (sign, secs) = if secs < 0.0 { ("-", -secs) } else { ("", secs) };
    let mut out = String::from(sign);
    if secs > 0.0 && secs < 1.0 {
        let _ = write!(out, "{secs:.2}s");
        return out;
    }
    // Truncation to u64 is intended (whole seconds); `as` saturates on huge values.
    let total = secs as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    let _ = if d > 0 {
        write!(out, "{d}d{h}h")
    } else if h > 0 {
        write!(out, "{h}h{m}m")
    } else if m > 0 {
        write!(out, "{m}m{s}s")
    } else {
        write!(out, "{s}s")
    };
    out
}

/// `1.5 MiB`-style sizes (and rates), binary units with one decimal.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `records` (JSON objects) written as `format`.
    fn render(format: Format, records: &[Value], tty: bool) -> String {
        let records: Vec<Record> = records.iter().cloned().map(record).collect();
        let mut buf = Vec::new();
        write_records(&mut buf, format, &records, tty).unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Asserts what `records` (JSON objects) look like as `format`, not on a terminal.
    fn assert_renders(format: Format, records: &[Value], expected: &str) {
        assert_eq!(render(format, records, false), expected);
    }

    const ALL: [Format; 8] = [
        Format::Default,
        Format::Table,
        Format::Json,
        Format::JsonPretty,
        Format::Csv,
        Format::Tsv,
        Format::Plain,
        Format::Toml,
    ];

    #[test]
    fn parses_every_format_name_and_rejects_others() {
        for f in ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        let err = "yaml".parse::<Format>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown format 'yaml' (expected default, table, json, json-pretty, csv, tsv, plain or toml)"
        );
    }

    #[test]
    fn record_order_pins_head_and_tail_keys() {
        let r = record(json!({"error": null, "b": 1, "uuid": "u", "c": 2, "status": "S"}));
        let r = record_order(r, &["uuid", "status", "missing"], &["error"]);
        let keys: Vec<&str> = r.keys().map(String::as_str).collect();
        assert_eq!(keys, ["uuid", "status", "b", "c", "error"]);
    }

    #[test]
    fn table_without_tty_joins_cells_with_two_spaces() {
        let records = [
            json!({"uuid": "abc", "status": "SUCCESS", "ok": true}),
            json!({"uuid": "d", "status": null, "ok": false}),
        ];
        assert_eq!(
            render(Format::Table, &records, false),
            "UUID  STATUS  OK\nabc  SUCCESS  true\nd    false\n"
        );
        assert_eq!(
            render(Format::Default, &records, false),
            render(Format::Table, &records, false)
        );
    }

    #[test]
    fn table_on_tty_pads_all_but_the_last_column() {
        let records = [
            json!({"uuid": "abc", "status": "SUCCESS", "x": 1}),
            json!({"uuid": "d", "status": "FAILED", "x": 22}),
        ];
        assert_eq!(
            render(Format::Table, &records, true),
            "UUID  STATUS   X\nabc   SUCCESS  1\nd     FAILED   22\n"
        );
    }

    #[test]
    fn table_columns_are_the_union_of_keys_in_first_appearance_order() {
        let records = [json!({"a": 1}), json!({"b": 2, "a": 3})];
        assert_eq!(render(Format::Table, &records, false), "A  B\n1  \n3  2\n");
    }

    #[test]
    fn cells_render_floats_durations_and_nested_values() {
        assert_renders(
            Format::Table,
            &[json!({
                "duration": 185.4, "ratio": 0.5, "n": 7, "meta": {"a": [1, 2]},
                "error": null, "tag": null, "s": "x y"
            })],
            "DURATION  RATIO  N  META  ERROR  TAG  S\n3m5s  0.50  7  {\"a\":[1,2]}      x y\n",
        );
    }

    #[test]
    fn intervals_render_like_the_official_client() {
        assert_eq!(format_interval(0.0), "0s");
        assert_eq!(format_interval(0.123), "0.12s");
        assert_eq!(format_interval(1.9), "1s");
        assert_eq!(format_interval(42.0), "42s");
        assert_eq!(format_interval(185.0), "3m5s");
        assert_eq!(format_interval(7800.0), "2h10m");
        assert_eq!(format_interval(90_061.0), "1d1h");
        assert_eq!(format_interval(-42.0), "-42s");
        assert_eq!(render_cell("duration", &json!(42)), "42s");
        assert_eq!(render_cell("other", &json!(42)), "42");
    }

    #[test]
    fn csv_quotes_only_when_needed_and_ends_lines_with_crlf() {
        assert_renders(
            Format::Csv,
            &[
                json!({"a": "plain", "b": "x,y", "c": "say \"hi\""}),
                json!({"a": "two\nlines", "b": "cr\r", "c": null}),
            ],
            "a,b,c\r\nplain,\"x,y\",\"say \"\"hi\"\"\"\r\n\"two\nlines\",\"cr\r\",\r\n",
        );
    }

    #[test]
    fn tsv_quotes_tabs_but_not_commas() {
        assert_renders(
            Format::Tsv,
            &[json!({"a": "x,y", "b": "t\tab", "d": 1.0})],
            "a\tb\td\r\nx,y\t\"t\tab\"\t1.00\r\n",
        );
    }

    #[test]
    fn csv_keeps_a_lone_empty_field_visible() {
        assert_renders(Format::Csv, &[json!({"a": null})], "a\r\n\"\"\r\n");
    }

    #[test]
    fn json_is_one_compact_object_per_line_with_error_and_tag_blanked() {
        assert_renders(
            Format::Json,
            &[
                json!({"uuid": "u", "x": null, "nested": {"k": [1]}, "tag": null, "error": null}),
                json!({"uuid": "v", "duration": 1.5, "error": "boom"}),
            ],
            "{\"uuid\":\"u\",\"x\":null,\"nested\":{\"k\":[1]},\"tag\":\"\",\"error\":\"\"}\n\
             {\"uuid\":\"v\",\"duration\":1.5,\"error\":\"boom\"}\n",
        );
    }

    #[test]
    fn json_pretty_is_an_indented_array() {
        assert_renders(Format::JsonPretty, &[json!({"a": 1, "error": null}), json!({"b": [true]})], "[\n  {\n    \"a\": 1,\n    \"error\": \"\"\n  },\n  {\n    \"b\": [\n      true\n    ]\n  }\n]\n");
    }

    #[test]
    fn plain_is_padded_key_value_blocks_separated_by_dashes() {
        assert_renders(
            Format::Plain,
            &[
                json!({"uuid": "u", "duration": 42, "error": null}),
                json!({"id": 1, "text": "two\nlines"}),
            ],
            "uuid:     u\nduration: 42s\nerror:    \n---\nid:   1\ntext: two\n      lines\n",
        );
    }

    #[test]
    fn toml_is_an_array_of_results_tables_that_parses_back() {
        let records = [
            json!({"uuid": "u", "n": 7, "ok": true, "error": null, "meta": {"a": [1, 2]}}),
            json!({"uuid": "v", "ratio": 0.5, "s": "say \"hi\"\n"}),
        ];
        let text = render(Format::Toml, &records, false);
        assert!(text.starts_with("[[results]]\n"), "{text}");
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let results = doc["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["n"].as_integer(), Some(7));
        assert_eq!(results[0]["error"].as_str(), Some(""));
        assert_eq!(results[0]["meta"]["a"][1].as_integer(), Some(2));
        assert_eq!(results[1]["ratio"].as_float(), Some(0.5));
        assert_eq!(results[1]["s"].as_str(), Some("say \"hi\"\n"));
    }

    #[test]
    fn zero_records_print_nothing_in_any_format() {
        for f in ALL {
            assert_eq!(render(f, &[], true), "", "{f}");
        }
    }

    #[test]
    fn sizes_read_in_binary_units_with_one_decimal() {
        assert_eq!(human(0.0), "0.0 B");
        assert_eq!(human(1023.0), "1023.0 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert_eq!(human(2048.0 * 1024f64.powi(4)), "2048.0 TiB");
    }
}
