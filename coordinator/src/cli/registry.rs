//! `tracevisor clients|relays|analyses-servers list|show|add|update|rm`.

use std::fmt::Write as _;

use clap::{Args, FromArgMatches, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value as Json};

use super::client::Client;
use super::render::{scalar, short_time, Table};
use super::{
    print_json, print_text, sanitize, CliError, Connection, Settings, TopConnection, EXIT_OK,
};

/// Which registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Clients,
    Relays,
    AnalysesServers,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Clients => "/clients",
            Kind::Relays => "/relays",
            Kind::AnalysesServers => "/analyses_servers",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Clients => "client",
            Kind::Relays => "relay",
            Kind::AnalysesServers => "analyses server",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Kind::Clients => "clients",
            Kind::Relays => "relays",
            Kind::AnalysesServers => "analyses-servers",
        }
    }
}

/// Flags of the records' kind-specific fields, turned into JSON members.
pub trait Fields: Args + FromArgMatches + std::fmt::Debug {
    fn insert(&self, body: &mut Map<String, Json>);
}

/// Fields of clients and analyses servers.
#[derive(Args, Debug, Clone)]
pub struct SshFields {
    /// SSH port (default 22)
    #[arg(long, value_name = "PORT")]
    pub sshport: Option<u16>,
    /// SSH user (default root)
    #[arg(long, value_name = "USER")]
    pub sshuser: Option<String>,
}

impl Fields for SshFields {
    fn insert(&self, body: &mut Map<String, Json>) {
        if let Some(p) = self.sshport {
            body.insert("sshport".into(), json!(p));
        }
        if let Some(u) = &self.sshuser {
            body.insert("sshuser".into(), json!(u));
        }
    }
}

/// Fields of relays.
#[derive(Args, Debug, Clone)]
pub struct RelayFields {
    /// lttng-relayd control port (default 5342)
    #[arg(long, value_name = "PORT")]
    pub ctrlport: Option<u16>,
    /// lttng-relayd data port (default 5343)
    #[arg(long, value_name = "PORT")]
    pub dataport: Option<u16>,
    /// The relay's --output directory, where analyses find the traces
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<String>,
}

impl Fields for RelayFields {
    fn insert(&self, body: &mut Map<String, Json>) {
        if let Some(p) = self.ctrlport {
            body.insert("ctrlport".into(), json!(p));
        }
        if let Some(p) = self.dataport {
            body.insert("dataport".into(), json!(p));
        }
        if let Some(d) = &self.output_dir {
            body.insert("output_dir".into(), json!(d));
        }
    }
}

#[derive(Args, Debug)]
pub struct RegistryArgs<F: Fields> {
    #[command(subcommand)]
    pub action: Action<F>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Subcommand, Debug)]
pub enum Action<F: Fields> {
    /// List the records
    #[command(visible_alias = "ls")]
    List,
    /// Show one record
    Show {
        /// Record id (see `list`)
        id: u64,
    },
    /// Register a host (hostname and one of --ipv4/--ipv6 are required)
    Add {
        /// DNS name or address literal, unique in this registry
        #[arg(long, value_name = "NAME")]
        hostname: String,
        #[command(flatten)]
        addresses: Addresses,
        #[command(flatten)]
        fields: F,
    },
    /// Change the given fields of a record
    Update {
        /// Record id (see `list`)
        id: u64,
        /// New DNS name or address literal
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        #[command(flatten)]
        addresses: Addresses,
        #[command(flatten)]
        fields: F,
    },
    /// Delete a record
    #[command(visible_alias = "delete")]
    Rm {
        /// Record id (see `list`)
        id: u64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Addresses {
    /// IPv4 address
    #[arg(long, value_name = "ADDR")]
    pub ipv4: Option<String>,
    /// IPv6 address
    #[arg(long, value_name = "ADDR")]
    pub ipv6: Option<String>,
}

impl Addresses {
    fn insert(&self, body: &mut Map<String, Json>) {
        if let Some(a) = &self.ipv4 {
            body.insert("ipv4".into(), json!(a));
        }
        if let Some(a) = &self.ipv6 {
            body.insert("ipv6".into(), json!(a));
        }
    }
}

pub async fn run<F: Fields>(
    top: &TopConnection,
    kind: Kind,
    args: RegistryArgs<F>,
) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let json_out = args.conn.json;
    let not_found = format!("`tracevisor {} list` shows the ids", kind.command());
    let one = |id: u64| format!("{}/{id}", kind.path());
    match args.action {
        Action::List => {
            let records = client.get(kind.path()).await?;
            if json_out {
                print_json(&records);
            } else {
                let list = records.as_array().map(Vec::as_slice).unwrap_or(&[]);
                print_text(&list_table(kind, list));
            }
        }
        Action::Show { id } => {
            let record = client
                .get(&one(id))
                .await
                .map_err(|e| e.if_not_found(&not_found))?;
            if json_out {
                print_json(&record);
            } else {
                print_text(&show(kind, &record));
            }
        }
        Action::Add {
            hostname,
            addresses,
            fields,
        } => {
            let mut body = Map::new();
            body.insert("hostname".into(), json!(hostname));
            addresses.insert(&mut body);
            fields.insert(&mut body);
            let record = client
                .call(Method::POST, kind.path(), Some(&Json::Object(body)))
                .await?;
            if json_out {
                print_json(&record);
            } else {
                println!(
                    "added {} {} ({})",
                    kind.singular(),
                    sanitize::line(&scalar(&record["id"])),
                    sanitize::line(&scalar(&record["hostname"]))
                );
            }
        }
        Action::Update {
            id,
            hostname,
            addresses,
            fields,
        } => {
            let mut body = Map::new();
            if let Some(h) = hostname {
                body.insert("hostname".into(), json!(h));
            }
            addresses.insert(&mut body);
            fields.insert(&mut body);
            if body.is_empty() {
                return Err(CliError::usage(format!(
                    "nothing to update: give the fields to change (`tracevisor {} update --help`)",
                    kind.command()
                )));
            }
            let record = client
                .call(Method::PUT, &one(id), Some(&Json::Object(body)))
                .await
                .map_err(|e| e.if_not_found(&not_found))?;
            if json_out {
                print_json(&record);
            } else {
                println!(
                    "updated {} {id} ({})",
                    kind.singular(),
                    sanitize::line(&scalar(&record["hostname"]))
                );
            }
        }
        Action::Rm { id } => {
            let answer = client
                .call(Method::DELETE, &one(id), None)
                .await
                .map_err(|e| e.if_not_found(&not_found))?;
            if json_out {
                print_json(&answer);
            } else {
                println!("removed {} {id}", kind.singular());
            }
        }
    }
    Ok(EXIT_OK)
}

/// The agent column of a client: connected/disconnected/none.
fn agent_state(agent: &Json) -> &'static str {
    match agent["connected"].as_bool() {
        Some(true) => "connected",
        Some(false) => "disconnected",
        None => "none",
    }
}

fn list_table(kind: Kind, records: &[Json]) -> String {
    if records.is_empty() {
        return format!(
            "no {}s registered (`tracevisor {} add --help`)\n",
            kind.singular(),
            kind.command()
        );
    }
    let opt = |v: &Json| v.as_str().unwrap_or("").to_owned();
    match kind {
        Kind::Relays => {
            let mut t = Table::new([
                "ID",
                "Hostname",
                "IPv4",
                "IPv6",
                "Ctrl",
                "Data",
                "Output dir",
            ])
            .right(0)
            .right(4)
            .right(5);
            for r in records {
                t.push(vec![
                    scalar(&r["id"]),
                    opt(&r["hostname"]),
                    opt(&r["ipv4"]),
                    opt(&r["ipv6"]),
                    scalar(&r["ctrlport"]),
                    scalar(&r["dataport"]),
                    opt(&r["output_dir"]),
                ]);
            }
            t.render(0)
        }
        Kind::AnalysesServers => {
            let mut t = Table::new(["ID", "Hostname", "IPv4", "IPv6", "SSH"]).right(0);
            for r in records {
                t.push(vec![
                    scalar(&r["id"]),
                    opt(&r["hostname"]),
                    opt(&r["ipv4"]),
                    opt(&r["ipv6"]),
                    ssh(r),
                ]);
            }
            t.render(0)
        }
        Kind::Clients => {
            let mut t = Table::new([
                "ID",
                "Hostname",
                "IPv4",
                "IPv6",
                "SSH",
                "Agent",
                "Version",
                "Kernel tracer",
            ])
            .right(0);
            for r in records {
                let agent = &r["agent"];
                let kernel = match agent["capabilities"]["kernel_tracer"].as_bool() {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                };
                t.push(vec![
                    scalar(&r["id"]),
                    opt(&r["hostname"]),
                    opt(&r["ipv4"]),
                    opt(&r["ipv6"]),
                    ssh(r),
                    agent_state(agent).to_owned(),
                    agent["version"].as_str().unwrap_or("-").to_owned(),
                    kernel.to_owned(),
                ]);
            }
            t.render(0)
        }
    }
}

fn ssh(r: &Json) -> String {
    format!(
        "{}@:{}",
        r["sshuser"].as_str().unwrap_or("root"),
        scalar(&r["sshport"])
    )
}

fn show(kind: Kind, r: &Json) -> String {
    let mut out = format!(
        "{} {}\n",
        kind.singular(),
        sanitize::line(&scalar(&r["id"]))
    );
    let mut line = |key: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(out, "  {key:<16}{}", sanitize::line(&value));
        }
    };
    let opt = |v: &Json| v.as_str().unwrap_or("").to_owned();
    line("hostname", opt(&r["hostname"]));
    line("ipv4", opt(&r["ipv4"]));
    line("ipv6", opt(&r["ipv6"]));
    match kind {
        Kind::Relays => {
            line("ctrlport", scalar(&r["ctrlport"]));
            line("dataport", scalar(&r["dataport"]));
            line("output_dir", opt(&r["output_dir"]));
        }
        _ => {
            line("sshport", scalar(&r["sshport"]));
            line("sshuser", opt(&r["sshuser"]));
        }
    }
    if kind == Kind::Clients {
        let agent = &r["agent"];
        if agent.is_object() {
            let state = agent_state(agent);
            let version = agent["version"].as_str().unwrap_or("?");
            line("agent", format!("{state} (tracesd {version})"));
            line("connected since", short_time(&agent["connected_since"]));
            line("last seen", short_time(&agent["last_seen"]));
            let caps = &agent["capabilities"];
            if caps.is_object() {
                let flag = |k: &str| match caps[k].as_bool() {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "no".to_owned(),
                    None => "-".to_owned(),
                };
                line("lttng", opt(&caps["lttng_version"]));
                line("sessiond", flag("sessiond_running"));
                if caps["lttng_control"].is_string() {
                    line("lttng control", opt(&caps["lttng_control"]));
                }
                let mut kernel = flag("kernel_tracer");
                if let Some(e) = caps["kernel_tracer_error"].as_str() {
                    let _ = write!(kernel, " ({})", super::one_line(e));
                }
                line("kernel tracer", kernel);
                line("userspace", flag("userspace_tracer"));
                line("babeltrace2", flag("babeltrace2"));
                let analyses: Vec<&str> = caps["analyses"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Json::as_str).collect())
                    .unwrap_or_default();
                line("analyses", analyses.join(", "));
            }
        } else {
            line("agent", "none".to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_show_their_agent() {
        let records = vec![
            json!({"id": 1, "hostname": "web1", "ipv4": "192.0.2.1", "ipv6": null, "sshport": 22, "sshuser": "root", "agent": null}),
            json!({"id": 2, "hostname": "localhost", "ipv4": "127.0.0.1", "sshport": 22, "sshuser": "root",
                   "agent": {"connected": true, "version": "0.1.0", "connected_since": "2024-05-01T10:00:00Z", "last_seen": "2024-05-01T10:00:05Z",
                             "capabilities": {"lttng_version": "2.13.9", "sessiond_running": true, "kernel_tracer": false,
                                              "kernel_tracer_error": "Kernel tracer not available", "userspace_tracer": true,
                                              "babeltrace2": true, "analyses": ["lttng-cputop-mi"]}}}),
        ];
        let text = list_table(Kind::Clients, &records);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("Agent") && lines[0].contains("Kernel tracer"),
            "{text}"
        );
        assert!(lines[2].contains("none"), "{text}");
        assert!(
            lines[3].contains("connected")
                && lines[3].contains("0.1.0")
                && lines[3].ends_with("no"),
            "{text}"
        );
        let shown = show(Kind::Clients, &records[1]);
        assert!(
            shown.contains("  kernel tracer   no (Kernel tracer not available)\n"),
            "{shown}"
        );
        assert!(
            shown.contains("  connected since 2024-05-01 10:00:00\n"),
            "{shown}"
        );
    }

    #[test]
    fn agent_strings_with_escape_sequences_print_as_text() {
        let hostile = "\x1b]0;pwned\x07evil\x1b[2J";
        let shown = r"\x1b]0;pwned\x07evil\x1b[2J";
        let record = json!({"id": 2, "hostname": "h", "ipv4": "127.0.0.1", "sshport": 22, "sshuser": "root",
            "agent": {"connected": true, "version": hostile, "connected_since": "2024-05-01T10:00:00Z",
                      "capabilities": {"lttng_version": hostile, "kernel_tracer": false,
                                       "kernel_tracer_error": hostile, "analyses": [hostile]}}});
        let safe = |text: &str| !text.chars().any(|c| sanitize::is_unsafe(c) && c != '\n');
        let list = list_table(Kind::Clients, std::slice::from_ref(&record));
        assert!(safe(&list) && list.contains(shown), "{list:?}");
        let text = show(Kind::Clients, &record);
        assert!(safe(&text), "{text:?}");
        assert!(
            text.contains(&format!("  agent           connected (tracesd {shown})\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  kernel tracer   no ({shown})\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  lttng           {shown}\n")),
            "{text}"
        );
    }
}
