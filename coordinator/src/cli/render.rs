//! Text rendering: aligned tables, jobs, fleet outcomes, userspace summaries and LAMI 1.0
//! documents (the `lttng-*-mi` analyses) as terminal tables with titles, units and a top-N.
//!
//! Every function returns a `String` (tested without a terminal) in which every value from the
//! server went through [`sanitize`] (tables sanitize their cells). LAMI tables name their
//! class; the class's title and columns come from the document's `table-classes` when it has
//! them, else from the `--metadata` of the lttng-analyses command that produced it (embedded:
//! `lami_classes.json`), else from the cells themselves.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::Value as Json;

use super::sanitize;
pub use super::table::{truncate, Table};

// ---------------------------------------------------------------------------------------
// Values

/// A JSON scalar as text (`null` → `-`).
pub fn scalar(v: &Json) -> String {
    match v {
        Json::Null => "-".to_owned(),
        Json::String(s) => s.clone(),
        Json::Number(n) => n.as_f64().map(number).unwrap_or_else(|| n.to_string()),
        Json::Bool(b) => yes_no(*b).to_owned(),
        other => other.to_string(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A number: integral values without decimals, others with up to 3.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Nanoseconds as `850 ns`, `12.3 µs`, `1.234 ms`, `2.500 s`, `3 min 20.0 s`.
pub fn duration_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 1e3 {
        format!("{} ns", number(ns))
    } else if a < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.3} ms", ns / 1e6)
    } else if a < 60e9 {
        format!("{:.3} s", ns / 1e9)
    } else {
        let s = ns / 1e9;
        format!("{:.0} min {:.1} s", (s / 60.0).trunc(), s % 60.0)
    }
}

/// Bytes as `512 B`, `8.0 KiB`, `1.5 MiB`, ...
pub fn size_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.abs() < 1024.0 {
        return format!("{} B", number(bytes));
    }
    let mut v = bytes / 1024.0;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Nanoseconds since the epoch as `HH:MM:SS.nnnnnnnnn` (UTC), or with the date.
pub fn timestamp_ns(ns: i128, with_date: bool) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(ns) else {
        return ns.to_string();
    };
    let clock = format!(
        "{:02}:{:02}:{:02}.{:09}",
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    );
    if with_date {
        format!(
            "{:04}-{:02}-{:02} {clock} UTC",
            t.year(),
            u8::from(t.month()),
            t.day()
        )
    } else {
        clock
    }
}

fn json_i128(v: &Json) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .or_else(|| v.as_f64().map(|f| f as i128))
}

/// A LAMI timestamp: `{"class": "timestamp", "value": ns}` or a bare number.
fn lami_timestamp(v: &Json) -> Option<i128> {
    json_i128(v.get("value").unwrap_or(v))
}

/// One LAMI cell as text (see the LAMI 1.0 data classes).
pub fn lami_cell(cell: &Json) -> String {
    let Json::Object(obj) = cell else {
        return scalar(cell);
    };
    let class = obj.get("class").and_then(Json::as_str).unwrap_or("");
    let value = obj.get("value");
    let f = |v: Option<&Json>| v.and_then(Json::as_f64);
    let ranged = |fmt: &dyn Fn(f64) -> String| -> String {
        match (f(value), f(obj.get("low")), f(obj.get("high"))) {
            (Some(v), _, _) => fmt(v),
            (None, Some(l), Some(h)) => format!("{} – {}", fmt(l), fmt(h)),
            (None, Some(l), None) => format!("≥ {}", fmt(l)),
            (None, None, Some(h)) => format!("≤ {}", fmt(h)),
            (None, None, None) => "?".to_owned(),
        }
    };
    let text = |key: &str| obj.get(key).and_then(Json::as_str).map(str::to_owned);
    match class {
        "unknown" => "?".to_owned(),
        "empty" => String::new(),
        "bool" => value
            .and_then(Json::as_bool)
            .map(|b| yes_no(b).to_owned())
            .unwrap_or_else(|| "?".to_owned()),
        "number" => ranged(&number),
        "ratio" => ranged(&|v| format!("{:.2} %", v * 100.0)),
        "duration" => ranged(&duration_ns),
        "size" => ranged(&size_bytes),
        "bitrate" => ranged(&|v| format!("{}/s", size_bytes(v / 8.0))),
        "timestamp" => value
            .and_then(json_i128)
            .map(|ns| timestamp_ns(ns, false))
            .unwrap_or_else(|| "?".to_owned()),
        "time-range" => {
            match (
                obj.get("begin").and_then(lami_timestamp),
                obj.get("end").and_then(lami_timestamp),
            ) {
                (Some(b), Some(e)) => {
                    format!("{} – {}", timestamp_ns(b, false), timestamp_ns(e, false))
                }
                _ => "?".to_owned(),
            }
        }
        "process" => {
            let name = text("name").unwrap_or_else(|| "?".to_owned());
            let tid = obj.get("tid").and_then(Json::as_i64);
            let pid = obj.get("pid").and_then(Json::as_i64);
            match (pid, tid) {
                (Some(p), Some(t)) if p != t => format!("{name} ({p}/{t})"),
                (_, Some(id)) | (Some(id), None) => format!("{name} ({id})"),
                (None, None) => name,
            }
        }
        "path" => text("path").unwrap_or_default(),
        "fd" => obj.get("fd").map(scalar).unwrap_or_else(|| "?".to_owned()),
        "irq" => {
            let nr = obj.get("nr").map(scalar).unwrap_or_else(|| "?".to_owned());
            let kind = if obj.get("hard").and_then(Json::as_bool) == Some(false) {
                "softirq "
            } else {
                ""
            };
            match text("name") {
                Some(name) => format!("{kind}{name} ({nr})"),
                None => format!("{kind}{nr}"),
            }
        }
        "cpu" => obj.get("id").map(scalar).unwrap_or_else(|| "?".to_owned()),
        "string" => value.map(scalar).unwrap_or_default(),
        _ => {
            if let Some(v) = value {
                scalar(v)
            } else if let Some(name) = text("name") {
                name
            } else {
                let rest: serde_json::Map<String, Json> = obj
                    .iter()
                    .filter(|(k, _)| *k != "class")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Json::Object(rest).to_string()
            }
        }
    }
}

/// Whether cells of this class read best right-aligned.
fn numeric_class(class: &str) -> bool {
    matches!(
        class,
        "number" | "ratio" | "duration" | "size" | "bitrate" | "fd" | "cpu"
    )
}

// ---------------------------------------------------------------------------------------
// LAMI

/// A column of a LAMI table class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub title: String,
    /// Data class (`number`, `duration`, ...), when declared.
    pub class: Option<String>,
    pub unit: Option<String>,
}

/// A resolved LAMI table class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableClass {
    pub title: String,
    pub columns: Vec<Column>,
}

fn builtin_classes() -> &'static Json {
    static CLASSES: OnceLock<Json> = OnceLock::new();
    CLASSES.get_or_init(|| {
        serde_json::from_str(include_str!("lami_classes.json")).unwrap_or(Json::Null)
    })
}

/// The table classes lttng-analyses declares for `command` (`lttng-iousagetop-mi` or a path to it).
fn builtin_table_classes(command: &str) -> Option<&'static Json> {
    let name = command.rsplit('/').next().unwrap_or(command);
    let all = builtin_classes();
    let group = all["commands"][name].as_str()?;
    all["table-classes"].get(group)
}

fn parse_class(v: &Json) -> Option<TableClass> {
    let columns = v
        .get("column-descriptions")?
        .as_array()?
        .iter()
        .map(|c| Column {
            title: c["title"].as_str().unwrap_or("").to_owned(),
            class: c["class"]
                .as_str()
                .or_else(|| c["type"].as_str())
                .map(str::to_owned),
            unit: c["unit"].as_str().map(str::to_owned),
        })
        .collect();
    Some(TableClass {
        title: v["title"].as_str().unwrap_or("").to_owned(),
        columns,
    })
}

/// Resolves a result's `class`: a name (looked up in the document's `table-classes`, then in
/// the builtin classes of `command`) or an inline object (with an optional `inherit`).
pub fn resolve_class(doc: &Json, command: &str, class: &Json) -> Option<TableClass> {
    let by_name = |name: &str| -> Option<TableClass> {
        doc.get("table-classes")
            .and_then(|t| t.get(name))
            .and_then(parse_class)
            .or_else(|| {
                builtin_table_classes(command)?
                    .get(name)
                    .and_then(parse_class)
            })
    };
    match class {
        Json::String(name) => by_name(name),
        Json::Object(obj) => {
            let base = obj.get("inherit").and_then(Json::as_str).and_then(by_name);
            let own = parse_class(class);
            let title = obj
                .get("title")
                .and_then(Json::as_str)
                .map(str::to_owned)
                .or_else(|| base.as_ref().map(|b| b.title.clone()));
            let columns = own.map(|c| c.columns).or_else(|| base.map(|b| b.columns))?;
            Some(TableClass {
                title: title.unwrap_or_default(),
                columns,
            })
        }
        _ => None,
    }
}

fn class_label(class: &Json) -> String {
    match class {
        Json::String(s) => s.clone(),
        Json::Object(o) => o
            .get("title")
            .or_else(|| o.get("inherit"))
            .and_then(Json::as_str)
            .unwrap_or("table")
            .to_owned(),
        _ => "table".to_owned(),
    }
}

fn column_header(c: &Column) -> String {
    match &c.unit {
        Some(u) if !u.is_empty() => format!("{} ({u})", c.title),
        _ => c.title.clone(),
    }
}

/// One LAMI result table as text: title, time range, columns with units, at most `top` rows
/// (0: all).
pub fn lami_table(doc: &Json, command: &str, result: &Json, top: usize) -> String {
    let class = resolve_class(doc, command, &result["class"]);
    let rows: Vec<&Vec<Json>> = result["data"]
        .as_array()
        .map(|r| r.iter().filter_map(Json::as_array).collect())
        .unwrap_or_default();
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let (title, mut columns) = match class {
        Some(c) if !c.title.is_empty() => (c.title, c.columns),
        Some(c) => (class_label(&result["class"]), c.columns),
        None => (class_label(&result["class"]), Vec::new()),
    };
    // Columns the class does not describe are named after their cells' class.
    for i in columns.len()..width {
        let cell_class = rows
            .iter()
            .find_map(|r| r.get(i)?.get("class")?.as_str())
            .map(str::to_owned);
        let title = match cell_class.as_deref() {
            Some(c) => {
                let mut chars = c.chars();
                chars
                    .next()
                    .map(|f| f.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
            None => format!("Column {}", i + 1),
        };
        columns.push(Column {
            title,
            class: cell_class,
            unit: None,
        });
    }
    let mut out = String::new();
    let _ = writeln!(out, "{}", sanitize::line(&title));
    let range = &result["time-range"];
    if let (Some(b), Some(e)) = (
        range.get("begin").and_then(lami_timestamp),
        range.get("end").and_then(lami_timestamp),
    ) {
        let _ = writeln!(
            out,
            "  {} to {} ({})",
            timestamp_ns(b, true),
            timestamp_ns(e, false),
            duration_ns((e - b) as f64)
        );
    }
    if rows.is_empty() {
        out.push_str("  (no rows)\n");
        return out;
    }
    let mut table = Table::new(columns.iter().map(column_header));
    for (i, c) in columns.iter().enumerate() {
        let class = c.class.clone().or_else(|| {
            rows.iter()
                .find_map(|r| r.get(i)?.get("class")?.as_str().map(str::to_owned))
        });
        if class.as_deref().is_some_and(numeric_class) {
            table = table.right(i);
        }
    }
    let shown = if top == 0 {
        rows.len()
    } else {
        top.min(rows.len())
    };
    for row in &rows[..shown] {
        table.push(row.iter().map(lami_cell).collect());
    }
    out.push_str(&table.render(2));
    if shown < rows.len() {
        let _ = writeln!(
            out,
            "  … {} more rows (top {top} shown; --top 0 shows all)",
            rows.len() - shown
        );
    }
    out
}

/// A whole LAMI document (`{"results": [...]}`) as text.
pub fn lami_document(doc: &Json, command: &str, top: usize) -> String {
    if let Some(err) = doc.get("error-message").and_then(Json::as_str) {
        return format!("  error: {}\n", sanitize::line(err));
    }
    let tables = doc["results"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if tables.is_empty() {
        return "  (no result tables: the trace had nothing for this analysis)\n".to_owned();
    }
    tables
        .iter()
        .map(|t| lami_table(doc, command, t, top))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `{"kind": "lami", "analyses": [{"command", "result"}]}` job result as text.
pub fn lami_result(result: &Json, top: usize) -> String {
    let mut out = String::new();
    for analysis in result["analyses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let command = analysis["command"].as_str().unwrap_or("analysis");
        let _ = writeln!(out, "== {} ==", sanitize::line(command));
        out.push_str(&lami_document(&analysis["result"], command, top));
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("(no analyses in the result)\n");
    }
    out
}

// ---------------------------------------------------------------------------------------
// Userspace summaries

/// A `{"kind": "ust"}` result: events per name, per process, and the totals.
pub fn ust_result(result: &Json, top: usize) -> String {
    let mut out = String::new();
    let total = result["total"].as_u64().unwrap_or(0);
    let host = sanitize::line(result["host"].as_str().unwrap_or("?"));
    let _ = write!(out, "Userspace events on {host}: {total} events");
    if let (Some(b), Some(e)) = (result["begin"].as_str(), result["end"].as_str()) {
        let _ = write!(out, ", {} to {}", sanitize::line(b), sanitize::line(e));
    }
    out.push('\n');
    if let Some(note) = result["note"].as_str() {
        let _ = writeln!(out, "  note: {}", sanitize::line(note));
    }
    let limit = |n: usize| if top == 0 { n } else { top.min(n) };
    let mut events: Vec<(&String, u64)> = result["events"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    events.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    if !events.is_empty() {
        out.push('\n');
        let mut t = Table::new(["Event", "Count", "Share"]).right(1).right(2);
        let shown = limit(events.len());
        for (name, count) in &events[..shown] {
            t.push(vec![
                name.to_string(),
                count.to_string(),
                share(*count, total),
            ]);
        }
        out.push_str(&t.render(2));
        more(&mut out, events.len() - shown, top);
    }
    let mut procs: Vec<&Json> = result["processes"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    procs.sort_by(|a, b| {
        b["events"]
            .as_u64()
            .cmp(&a["events"].as_u64())
            .then_with(|| a["vpid"].as_i64().cmp(&b["vpid"].as_i64()))
    });
    if !procs.is_empty() {
        out.push('\n');
        let mut t = Table::new(["Process", "VPID", "Events", "Share"])
            .right(1)
            .right(2)
            .right(3);
        let shown = limit(procs.len());
        for p in &procs[..shown] {
            let events = p["events"].as_u64().unwrap_or(0);
            t.push(vec![
                p["procname"].as_str().unwrap_or("?").to_owned(),
                scalar(&p["vpid"]),
                events.to_string(),
                share(events, total),
            ]);
        }
        out.push_str(&t.render(2));
        more(&mut out, procs.len() - shown, top);
    }
    out
}

fn share(n: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.1} %", n as f64 * 100.0 / total as f64)
    }
}

fn more(out: &mut String, hidden: usize, top: usize) {
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  … {hidden} more (top {top} shown; --top 0 shows all)"
        );
    }
}

/// Any job result as text, by its `kind`.
pub fn result(result: &Json, top: usize) -> String {
    let body = match result["kind"].as_str() {
        Some("ust") => ust_result(result, top),
        Some("lami") => lami_result(result, top),
        _ if result.is_null() => "(no result)\n".to_owned(),
        _ => {
            let t = serde_json::to_string_pretty(result).unwrap_or_default();
            let mut t = sanitize::json(&t).into_owned();
            t.push('\n');
            t
        }
    };
    let mut out = body;
    if let Some(trace) = result["trace"].as_str() {
        let host = result["host"].as_str().unwrap_or("?");
        let _ = writeln!(
            out,
            "trace: {} (on {})",
            sanitize::line(trace),
            sanitize::line(host)
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// Times

fn parse_time(v: &Json) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// `2024-05-01T10:00:00.123Z` → `2024-05-01 10:00:00`.
pub fn short_time(v: &Json) -> String {
    match parse_time(v) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => scalar(v),
    }
}

/// `GET /analyses` profiles as a table.
pub fn analyses_table(profiles: &[Json]) -> String {
    let mut t = Table::new(["Type", "Summary", "Records", "Runs", "Description"]);
    for p in profiles {
        let count = |k: &str| p[k].as_array().map_or(0, Vec::len);
        let mut records = Vec::new();
        for (key, label) in [
            ("kernel_events", "kernel events"),
            ("syscalls", "syscalls"),
            ("userspace_events", "userspace events"),
        ] {
            let n = count(key);
            if n > 0 {
                records.push(format!("{n} {label}"));
            }
        }
        let runs: Vec<String> = p["commands"]
            .as_array()
            .map(|cmds| {
                cmds.iter()
                    .filter_map(|c| c.as_array()?.first()?.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let summary = scalar(&p["summary"]);
        t.push(vec![
            scalar(&p["analysis"]),
            summary.clone(),
            records.join(", "),
            if runs.is_empty() && summary == "ust" {
                "babeltrace2".to_owned()
            } else {
                runs.join(", ")
            },
            scalar(&p["description"]),
        ]);
    }
    t.render(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_cut() {
        let mut t = Table::new(["Name", "Count", "Note"]).right(1);
        t.push(vec!["a".into(), "5".into(), "x".repeat(60)]);
        t.push(vec!["µlong".into(), "12345".into(), String::new()]);
        let text = t.render(2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  Name   Count  Note");
        assert_eq!(lines[2], format!("  a          5  {}", "x".repeat(60)));
        assert_eq!(lines[3], "  µlong  12345");
        assert_eq!(truncate(&"y".repeat(60), 10), format!("{}…", "y".repeat(9)));
    }

    #[test]
    fn units() {
        assert_eq!(duration_ns(850.0), "850 ns");
        assert_eq!(duration_ns(12_300.0), "12.3 µs");
        assert_eq!(duration_ns(1_414_213.56), "1.414 ms");
        assert_eq!(duration_ns(2.5e9), "2.500 s");
        assert_eq!(size_bytes(512.0), "512 B");
        assert_eq!(size_bytes(8192.0), "8.0 KiB");
        assert_eq!(size_bytes(1.5 * 1024.0 * 1024.0), "1.5 MiB");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(
            timestamp_ns(1_700_000_000_000_000_000, true),
            "2023-11-14 22:13:20.000000000 UTC"
        );
    }

    #[test]
    fn lami_cells() {
        assert_eq!(
            lami_cell(&json!({"class": "process", "name": "w", "tid": 12})),
            "w (12)"
        );
        assert_eq!(
            lami_cell(&json!({"class": "process", "name": "w", "pid": 10, "tid": 12})),
            "w (10/12)"
        );
        assert_eq!(
            lami_cell(&json!({"class": "ratio", "value": 0.6})),
            "60.00 %"
        );
        assert_eq!(lami_cell(&json!({"class": "unknown"})), "?");
        assert_eq!(lami_cell(&json!(null)), "-");
        assert_eq!(
            lami_cell(&json!({"class": "irq", "hard": true, "nr": 19, "name": "eth0"})),
            "eth0 (19)"
        );
        assert_eq!(
            lami_cell(&json!({"class": "number", "low": 1, "high": 5})),
            "1 – 5"
        );
        assert_eq!(lami_cell(&json!({"class": "cpu", "id": 1})), "1");
        assert_eq!(lami_cell(&json!(7)), "7");
    }

    /// Whether `text` can go to a terminal: no control character but its own newlines.
    fn terminal_safe(text: &str) -> bool {
        !text.chars().any(|c| sanitize::is_unsafe(c) && c != '\n')
    }

    const HOSTILE: &str = "\x1b]0;pwned\x07evil\x1b[2J";
    const SHOWN: &str = r"\x1b]0;pwned\x07evil\x1b[2J";

    #[test]
    fn escape_sequences_in_a_ust_result_print_as_text() {
        let result = json!({
            "kind": "ust", "total": 3, "host": format!("h{HOSTILE}"),
            "events": {format!("ev{HOSTILE}"): 3},
            "processes": [{"vpid": 7, "procname": HOSTILE, "events": 3, "threads": {}}],
            "begin": "1.0", "end": "2.0\x1b[1A", "note": "n\x1b[H",
            "trace": format!("/t{HOSTILE}"),
        });
        let text = super::result(&result, 10);
        assert!(terminal_safe(&text), "{text:?}");
        let row = text
            .lines()
            .find(|l| l.contains("pwned") && l.trim_end().ends_with('%') && l.contains(" 7 "))
            .unwrap_or_else(|| panic!("no process row: {text}"));
        assert!(row.trim_start().starts_with(SHOWN), "{row}");
        assert!(
            text.contains(&format!("Userspace events on h{SHOWN}: 3 events")),
            "{text}"
        );
        assert!(
            text.contains(&format!("trace: /t{SHOWN} (on h{SHOWN})")),
            "{text}"
        );
        // The columns stay aligned: the escaped name is counted as it is shown.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("VPID") || l.contains(" 7 "))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(
            lines[0].find("VPID").map(|i| i + 4),
            lines[1].find(" 7 ").map(|i| i + 2),
            "{text}"
        );
    }

    #[test]
    fn escape_sequences_in_lami_documents_print_as_text() {
        let doc = json!({
            "results": [{
                "class": {"title": format!("Top{HOSTILE}"), "column-descriptions": [
                    {"title": format!("Process{HOSTILE}"), "class": "process"},
                    {"title": "Ratio", "class": "ratio", "unit": "\u{9b}2J"}]},
                "data": [[{"class": "process", "name": HOSTILE, "tid": 12}, {"class": "ratio", "value": 0.5}],
                         [{"class": "string", "value": "a\nb\rc"}, {"class": "unknown"}]]
            }]
        });
        let text = lami_result(
            &json!({"analyses": [{"command": format!("x{HOSTILE}"), "result": doc}]}),
            10,
        );
        assert!(terminal_safe(&text), "{text:?}");
        assert!(text.contains(&format!("== x{SHOWN} ==")), "{text}");
        assert!(text.contains(&format!("Top{SHOWN}\n")), "{text}");
        assert!(text.contains(&format!("{SHOWN} (12)")), "{text}");
        assert!(text.contains(r"a\x0ab\x0dc"), "{text}");
        assert!(text.contains(r"(\x9b2J)"), "{text}");
        let error = lami_document(&json!({"error-message": HOSTILE}), "x", 10);
        assert_eq!(error, format!("  error: {SHOWN}\n"));
        // Anything else is shown as JSON, with the escapes JSON has.
        let other = super::result(&json!({"kind": "raw", "x": "\u{9b}2J\x1b"}), 10);
        assert!(terminal_safe(&other), "{other:?}");
    }

    #[test]
    fn inline_and_unknown_classes() {
        let doc = json!({
            "table-classes": {"base": {"title": "Base", "column-descriptions": [
                {"title": "Name", "class": "string"}, {"title": "Calls", "class": "number", "unit": "calls"}]}},
            "results": [
                {"class": {"inherit": "base", "title": "Base [x]"}, "data": [[{"class": "string", "value": "a"}, {"class": "number", "value": 3}]]},
                {"class": "nope", "data": [[{"class": "size", "value": 2048}, 4]]}
            ]
        });
        let text = lami_document(&doc, "my-tool", 10);
        assert!(text.contains("Base [x]\n"), "{text}");
        assert!(text.contains("Calls (calls)"), "{text}");
        assert!(text.contains("nope\n"), "{text}");
        assert!(text.contains("Size"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
    }
}
