//! `tracevisor jobs`, `job ID`, `cancel ID` and `analyses`.

use clap::Args;
use reqwest::Method;
use serde_json::Value as Json;

use super::client::Client;
use super::{
    job_view, print_json, print_text, render, sanitize, trace, CliError, Connection, Settings,
    TopConnection, EXIT_OK, EXIT_REFUSED,
};

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Include finished jobs
    #[arg(long, short = 'a')]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// Job id (see `tracevisor jobs --all`)
    pub id: u64,
    /// Rows shown per result table (0: all)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// Job id (see `tracevisor jobs`)
    pub id: u64,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct AnalysesArgs {
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Connection,
}

/// Shows `GET /status`: the database's health and what the coordinator holds.
pub async fn status(top: &TopConnection, args: StatusArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let status = client.get("/status").await?;
    if args.conn.json {
        print_json(&status);
    } else {
        let mib = |v: &Json| {
            v.as_u64().map_or("unknown".to_owned(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            })
        };
        let field = |k: &str| match &status[k] {
            Json::String(s) => sanitize::line(s).into_owned(),
            Json::Null => "unknown".to_owned(),
            other => sanitize::line(&other.to_string()).into_owned(),
        };
        println!(
            "database          {} (schema {})",
            field("database"),
            field("schema_version")
        );
        println!("version           {}", field("version"));
        println!("uptime            {} s", field("uptime_secs"));
        println!("agents connected  {}", field("agents_connected"));
        println!("agent links open  {}", field("agent_links_open"));
        println!("jobs running      {}", field("jobs_running"));
        println!(
            "resident memory   {}",
            mib(&status["resident_memory_bytes"])
        );
        println!("open descriptors  {}", field("open_fds"));
    }
    Ok(EXIT_OK)
}

const JOBS_HINT: &str = "`tracevisor jobs --all` lists the jobs";

pub async fn list(top: &TopConnection, args: JobsArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let path = if args.all { "/list?all=true" } else { "/list" };
    let answer = client.get(path).await?;
    if args.conn.json {
        print_json(&answer);
    } else {
        let sessions = answer["sessions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(job_view::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if sessions.is_empty() && !args.all {
            println!("no running jobs (--all shows finished ones)");
        } else {
            print_text(&job_view::jobs_table(&sessions));
        }
    }
    Ok(EXIT_OK)
}

/// Shows a job; a failed job exits with 6 like `trace`.
pub async fn show(top: &TopConnection, args: JobArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let job = client
        .get(&format!("/jobs/{}", args.id))
        .await
        .map_err(|e| e.if_not_found(JOBS_HINT))?;
    let record = job_view::parse(&job)?;
    if !record.status.is_ended() {
        if args.conn.json {
            print_json(&job);
        } else {
            print_text(&job_view::job(&record, args.top));
        }
        return Ok(EXIT_OK);
    }
    trace::report(&job, &record, args.conn.json, args.top, true)
}

pub async fn cancel(top: &TopConnection, args: CancelArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let id = args.id;
    let answer = client
        .send(Method::DELETE, &format!("/jobs/{id}"), None)
        .await?;
    if answer.status.is_success() {
        if args.conn.json {
            print_json(&answer.body);
        } else {
            println!("cancelling job {id}: its session is stopped and destroyed (`tracevisor job {id}` shows the end)");
        }
        return Ok(EXIT_OK);
    }
    if answer.status == reqwest::StatusCode::CONFLICT {
        let status = job_view::status_name_of(&answer.body["job"]["status"]);
        return Err(CliError::new(
            EXIT_REFUSED,
            format!("job {id} is not running ({status}): nothing to cancel (409)"),
        ));
    }
    Err(client.answer_error(&answer).if_not_found(JOBS_HINT))
}

pub async fn analyses(top: &TopConnection, args: AnalysesArgs) -> Result<u8, CliError> {
    let client = Client::new(&Settings::resolve(top, &args.conn))?;
    let profiles = client.get("/analyses").await?;
    if args.conn.json {
        print_json(&profiles);
    } else {
        let list: &[Json] = profiles.as_array().map(Vec::as_slice).unwrap_or(&[]);
        print_text(&render::analyses_table(list));
    }
    Ok(EXIT_OK)
}
