//! `tracevisor recorder start|list|snapshot|stop`: flight recorders across the fleet
//! (`/recorders`): snapshot-mode sessions kept armed on agents, snapshots taken on all of a
//! recorder's hosts at once and analysed.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value as Json};

use super::client::Client;
use super::table::Table;
use super::{
    job_view, print_json, print_text, sanitize, trace, CliError, Connection, Settings,
    TopConnection, EXIT_OK,
};

#[derive(Args, Debug)]
pub struct RecorderArgs {
    #[command(subcommand)]
    pub action: RecorderAction,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Subcommand, Debug)]
pub enum RecorderAction {
    /// Arm a flight recorder on hosts with an agent (kept armed, re-armed when an agent restarts)
    Start {
        /// Agents' hostnames
        #[arg(value_name = "HOST", required_unless_present = "connected")]
        hosts: Vec<String>,
        /// Every connected agent instead
        #[arg(long, conflicts_with = "hosts")]
        connected: bool,
        /// With --connected: only agents with this capability (repeatable)
        #[arg(long, value_name = "CAPABILITY", requires = "connected")]
        require: Vec<String>,
        /// Analysis type: its events are recorded, its analysis runs on each snapshot
        #[arg(long = "type", value_name = "TYPE")]
        analysis_type: String,
        /// Ring buffer per channel and CPU, in MiB (1-1024)
        #[arg(long, value_name = "MIB", default_value_t = 16)]
        buffer_mib: u64,
    },
    /// List the recorders and their state on each host
    List,
    /// Record a snapshot on every host of a recorder at once and print each host's analysis
    Snapshot {
        /// Recorder id
        id: u64,
        /// Keep the snapshots for `tracevisor fetch JOB`
        #[arg(long)]
        keep: bool,
        /// Rows shown per result table (0: all)
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
    },
    /// Disarm a recorder: its sessions are destroyed on every host
    Stop {
        /// Recorder id
        id: u64,
    },
}

fn text(value: &Json) -> String {
    sanitize::line(value.as_str().unwrap_or("")).into_owned()
}

/// The recorder's hosts, one line each: `host: state (error)`.
fn states(recorder: &Json) -> String {
    let mut out = String::new();
    for state in recorder["states"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}: {}",
            text(&state["host"]),
            text(&state["state"])
        ));
        if let Some(error) = state["error"].as_str() {
            out.push_str(&format!(" ({})", sanitize::line(error)));
        }
        out.push('\n');
    }
    out
}

const HINT: &str = "see `tracevisor recorder list`";

pub async fn run(top: &TopConnection, args: RecorderArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let json_out = args.conn.json;
    match args.action {
        RecorderAction::Start {
            hosts,
            connected,
            require,
            analysis_type,
            buffer_mib,
        } => {
            let hosts = if connected {
                json!({ "agents": "connected", "require": require })
            } else {
                json!(hosts)
            };
            let body = json!({ "hosts": hosts, "type": analysis_type, "buffer_mib": buffer_mib });
            let recorder = client.call(Method::POST, "/recorders", Some(&body)).await?;
            if json_out {
                print_json(&recorder);
            } else {
                print_text(&format!(
                    "recorder {}: {} events, {} MiB per channel and CPU\n{}",
                    recorder["id"],
                    text(&recorder["type"]),
                    recorder["buffer_mib"],
                    states(&recorder)
                ));
            }
            Ok(EXIT_OK)
        }
        RecorderAction::List => {
            let list = client.get("/recorders").await?;
            if json_out {
                print_json(&list);
                return Ok(EXIT_OK);
            }
            let rows = list.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no flight recorders (`tracevisor recorder start HOST... --type TYPE`)");
                return Ok(EXIT_OK);
            }
            let mut table = Table::new(["ID", "TYPE", "BUFFER", "CREATED", "HOSTS"]);
            for r in &rows {
                let hosts: Vec<String> = r["states"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{} {}", text(&s["host"]), text(&s["state"])))
                    .collect();
                table.push(vec![
                    r["id"].to_string(),
                    text(&r["type"]),
                    format!("{} MiB", r["buffer_mib"]),
                    text(&r["created"]),
                    hosts.join(", "),
                ]);
            }
            print_text(&table.render(0));
            Ok(EXIT_OK)
        }
        RecorderAction::Snapshot { id, keep, top } => {
            let answer = client
                .send(
                    Method::POST,
                    &format!("/recorders/{id}/snapshots"),
                    Some(&json!({ "keep_trace": keep })),
                )
                .await?;
            if !answer.status.is_success() && answer.body.get("hosts").is_none() {
                return Err(client.answer_error(&answer).if_not_found(HINT));
            }
            let record = job_view::parse(&answer.body)?;
            let code = trace::report(&answer.body, &record, json_out, top, true)?;
            if keep && !json_out {
                eprintln!(
                    "kept: `tracevisor fetch {}` downloads the snapshots, a folder per host",
                    record.id
                );
            }
            Ok(code)
        }
        RecorderAction::Stop { id } => {
            let answer = client
                .send(Method::DELETE, &format!("/recorders/{id}"), None)
                .await?;
            if !answer.status.is_success() {
                return Err(client.answer_error(&answer).if_not_found(HINT));
            }
            if json_out {
                print_json(&answer.body);
            } else {
                print_text(&format!("recorder {id} stopped\n{}", states(&answer.body)));
            }
            Ok(EXIT_OK)
        }
    }
}
