//! Launches the real `tracevisor` binary on a free loopback port with a temp data dir, and talks to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::StatusCode;
use serde_json::Value as Json;

/// The profile directory the running test or benchmark comes from (`.../target/debug` or `release`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/PROFILE/deps, `cargo run` binaries in target/PROFILE.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Path of a workspace binary built next to the tests (`cargo build --workspace --bins` first).
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = target_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --all-targets` before the tests (the README test command does)",
            path.display()
        );
    }
    Ok(path)
}

/// Marker for [`Coordinator::start`]'s `extra` flags: keep the built-in local agent (the
/// harness otherwise sets `TRACEVISOR_NO_LOCAL_AGENT=true`). `tracevisor serve` has no such
/// flag, so the harness does not pass it on.
pub const LOCAL_AGENT: &str = "--local-agent";

/// A running coordinator process.
pub struct Coordinator {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Bearer token to send, if any.
    pub token: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Coordinator {
    /// Starts `tracevisor serve --listen 127.0.0.1:0 --data-dir DIR --no-local-agent EXTRA...`
    /// (pass [`LOCAL_AGENT`] among `extra` to keep the built-in local agent).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Result<Coordinator> {
        Self::start_with(data_dir, "127.0.0.1:0", extra, &[])
    }

    /// Starts with `toml` as its configuration file (written into the data directory as
    /// `tracevisor.toml`) and `extra` flags.
    pub fn start_with_config(data_dir: &Path, toml: &str, extra: &[&str]) -> Result<Coordinator> {
        let file = data_dir.join("tracevisor.toml");
        std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
        let file = file.display().to_string();
        let mut args = vec!["--config", file.as_str()];
        args.extend_from_slice(extra);
        Self::start(data_dir, &args)
    }

    /// Starts with a given listen address, extra flags and extra environment. The built-in
    /// local agent is off unless `extra` holds [`LOCAL_AGENT`] (a harness marker, not passed
    /// to the binary).
    pub fn start_with(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Coordinator> {
        let mut cmd = Command::new(binary("tracevisor")?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra.iter().filter(|a| **a != LOCAL_AGENT))
            .args(
                crate::lttng_control()
                    .map(|control| ["--lttng-control", control])
                    .into_iter()
                    .flatten(),
            )
            .env(
                "RUST_LOG",
                // TRACEVISOR_TEST_LOG overrides the coordinator's log filter when investigating.
                std::env::var("TRACEVISOR_TEST_LOG")
                    .unwrap_or_else(|_| "info,surrealdb=warn,surrealkv=warn".into()),
            )
            .env_remove("TRACEVISOR_TOKEN")
            .env_remove("TRACEVISOR_AGENT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if extra.contains(&LOCAL_AGENT) {
            cmd.env_remove("TRACEVISOR_NO_LOCAL_AGENT");
        } else {
            cmd.env("TRACEVISOR_NO_LOCAL_AGENT", "true");
        }
        let mut child = cmd.spawn().context("spawning tracevisor")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tracevisor] {line}");
                if line.contains("tracevisor listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .and_then(|a| a.parse().ok())
                    {
                        let _ = tx.send(addr);
                    }
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("tracevisor did not start (exit {status:?}); its log:\n{logs}");
            }
        };
        // The coordinator closes connections idle for its header timeout (10 s by default, 2 s
        // in the tests that lower it): pooled connections are dropped well before the shortest
        // of these, never reused as the server closes them (CI once caught that race at 5 s).
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_millis(800))
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Coordinator {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            token: None,
            logs,
            http,
        })
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADDR/trace/api/v1.0` + path.
    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/trace/api/v1.0{path}"))
    }

    /// The log lines printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until the log holds a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("log never showed {needle:?}")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request builder with the bearer token, if any.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, self.api(path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends a request and returns the status and the JSON body (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<(StatusCode, Json)> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let json = if text.is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("non-JSON answer {status}: {text}"))?
        };
        Ok((status, json))
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Json)> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Json) -> Result<(StatusCode, Json)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Json) -> Result<(StatusCode, Json)> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(StatusCode, Json)> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit and returns its status code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        // Its own bounds: 10 s of request drain, 30 s for jobs to end, 5 s for agent links.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("tracevisor did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
