//! `tracevisor credentials [list]` and `tracevisor credentials revoke HOST|ID`: the agents'
//! own credentials, issued by `tracesd enroll`.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value as Json;

use super::client::Client;
use super::table::Table;
use super::{
    print_json, print_text, sanitize, CliError, Connection, Settings, TopConnection, EXIT_OK,
};

#[derive(Args, Debug)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    pub action: Option<CredentialsAction>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Subcommand, Debug)]
pub enum CredentialsAction {
    /// List every credential: host, id, when and from where it was issued, whether a link uses
    /// it, and when and why it was revoked
    List,
    /// Revoke a credential (by id) or every live credential of a host (by hostname): its link
    /// is closed at once and reconnects are refused until the host enrolls again
    Revoke {
        /// A credential id (16 hex digits) or a hostname
        target: String,
    },
}

fn text(value: &Json) -> String {
    sanitize::line(value.as_str().unwrap_or("")).into_owned()
}

pub async fn run(top: &TopConnection, args: CredentialsArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let list = client.get("/agents/credentials").await?;
    let rows = list.as_array().cloned().unwrap_or_default();
    match args.action.unwrap_or(CredentialsAction::List) {
        CredentialsAction::List => {
            if args.conn.json {
                print_json(&list);
                return Ok(EXIT_OK);
            }
            if rows.is_empty() {
                println!("no agent credentials (hosts get one with `tracesd enroll`)");
                return Ok(EXIT_OK);
            }
            let mut table = Table::new(["HOST", "ID", "ISSUED", "FROM", "STATE"]);
            for row in &rows {
                let state = match row["revoked"].as_str() {
                    Some(when) => format!(
                        "revoked {} ({})",
                        sanitize::line(when),
                        text(&row["revoked_why"])
                    ),
                    None if row["connected"] == Json::Bool(true) => "connected".to_owned(),
                    None => "valid".to_owned(),
                };
                table.push(vec![
                    text(&row["hostname"]),
                    text(&row["id"]),
                    text(&row["created"]),
                    text(&row["created_from"]),
                    state,
                ]);
            }
            print_text(&table.render(0));
            Ok(EXIT_OK)
        }
        CredentialsAction::Revoke { target } => {
            let is_id = target.len() == 16 && target.bytes().all(|b| b.is_ascii_hexdigit());
            let ids: Vec<String> = if is_id {
                vec![target.to_ascii_lowercase()]
            } else {
                rows.iter()
                    .filter(|r| {
                        r["hostname"] == Json::String(target.clone()) && r["revoked"].is_null()
                    })
                    .filter_map(|r| r["id"].as_str().map(str::to_owned))
                    .collect()
            };
            if ids.is_empty() {
                return Err(CliError::new(
                    super::EXIT_NOT_FOUND,
                    format!(
                        "no live credential for {target} (`tracevisor credentials` lists them)"
                    ),
                ));
            }
            let mut revoked = Vec::new();
            for id in ids {
                let row = client
                    .call(Method::DELETE, &format!("/agents/credentials/{id}"), None)
                    .await
                    .map_err(|e| e.if_not_found("`tracevisor credentials` lists them"))?;
                if !args.conn.json {
                    println!(
                        "revoked credential {} of {}: its link is closed and reconnects are refused until the host enrolls again",
                        text(&row["id"]),
                        text(&row["hostname"])
                    );
                }
                revoked.push(row);
            }
            if args.conn.json {
                print_json(&Json::Array(revoked));
            }
            Ok(EXIT_OK)
        }
    }
}
