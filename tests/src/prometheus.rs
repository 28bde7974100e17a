//! The official Prometheus client's text-format parser (`prometheus_client.parser`,
//! python3-prometheus-client), run on an exposition: it raises on anything malformed.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value as Json;

use crate::skip::system_python;

/// Every sample as `{"name", "labels", "value"}`, and every family's type, as the Prometheus
/// client parses the text (it raises on anything malformed).
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
print(json.dumps({
    "types": {f.name: f.type for f in families},
    "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for f in families for s in f.samples],
}))
"#;

/// `{"types", "samples"}` of an exposition; panics (with the parser's message) when the
/// official parser refuses it.
pub fn parse(text: &str) -> Json {
    let mut child = Command::new(system_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Prometheus parser");
    child
        .stdin
        .take()
        .expect("the Prometheus parser")
        .write_all(text.as_bytes())
        .expect("the Prometheus parser");
    let out = child.wait_with_output().expect("the Prometheus parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the Prometheus parser")
}

/// The value of the sample `name` with `labels` among [`parse`]'s samples.
pub fn sample(parsed: &Json, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parsed["samples"]
        .as_array()
        .expect("the Prometheus parser")
        .iter()
        .find_map(|s| {
            let matches = s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v));
            matches.then(|| s["value"].as_f64().expect("the Prometheus parser"))
        })
}
