//! A SurrealDB server (the `surrealdb-server` binary of this crate: SurrealDB's own server at
//! the coordinator SDK's exact version) and coordinators that share it as a cluster.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::agents::free_port;
use crate::coordinator::{binary, Coordinator};

/// A running `surrealdb-server start --bind 127.0.0.1:PORT --user U --pass P memory`.
pub struct SurrealServer {
    child: Child,
    pub addr: SocketAddr,
    pub user: String,
    pub pass: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl SurrealServer {
    /// Starts an in-memory server on a free loopback port with a random root password, and
    /// waits until it serves.
    pub fn start() -> Result<SurrealServer> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pass = format!("pw-{:032x}", rand_u128());
        let mut child = Command::new(binary("surrealdb-server")?)
            .args([
                "start",
                "--bind",
                &addr.to_string(),
                "--user",
                "root",
                "--pass",
                &pass,
            ])
            .args(["--log", "warn", "memory"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning surrealdb-server")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "surrealdb-server exited ({status}):\n{}",
                    logs.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("surrealdb-server did not listen on {addr} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(SurrealServer {
            child,
            addr,
            user: "root".into(),
            pass,
            logs,
        })
    }

    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for SurrealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    u128::from_le_bytes(bytes)
}

/// What the members of a test cluster share: the database, the cluster token (a 0600 file)
/// and the agents' enrollment token.
pub struct ClusterSetup {
    pub server: SurrealServer,
    pub token_file: PathBuf,
    pub cluster_token: String,
    pub agent_token: String,
    dir: tempfile::TempDir,
}

/// A member: the coordinator and its internal API's address.
pub struct Member {
    pub coordinator: Coordinator,
    pub internal: SocketAddr,
    _data: tempfile::TempDir,
}

impl ClusterSetup {
    pub fn new() -> Result<ClusterSetup> {
        use std::os::unix::fs::PermissionsExt;
        let server = SurrealServer::start()?;
        let dir = crate::temp_dir("tv-cluster-");
        let cluster_token = format!("cluster-{:032x}", rand_u128());
        let token_file = dir.path().join("cluster-token");
        std::fs::write(&token_file, format!("{cluster_token}\n"))?;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
        Ok(ClusterSetup {
            server,
            token_file,
            cluster_token,
            agent_token: format!("agent-{:032x}", rand_u128()),
            dir,
        })
    }

    /// Starts a coordinator on the shared database with its own data directory and internal
    /// port, no built-in agent; `extra` flags are passed on.
    pub fn member(&self, extra: &[&str]) -> Result<Member> {
        self.member_with(extra, &[])
    }

    /// Like [`ClusterSetup::member`], with extra environment (e.g. `RUST_LOG`).
    pub fn member_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Result<Member> {
        let data = crate::temp_dir("tv-member-");
        let internal: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let (db, internal_text) = (self.server.url(), internal.to_string());
        let token_file = self.token_file.display().to_string();
        let mut args = vec![
            "--db",
            db.as_str(),
            "--db-user",
            self.server.user.as_str(),
            "--cluster-listen",
            internal_text.as_str(),
            "--cluster-token-file",
            token_file.as_str(),
            "--agent-token",
            self.agent_token.as_str(),
        ];
        args.extend_from_slice(extra);
        let mut vars = vec![("TRACEVISOR_DB_PASS", self.server.pass.as_str())];
        vars.extend_from_slice(env);
        let coordinator = Coordinator::start_with(data.path(), "127.0.0.1:0", &args, &vars)?;
        Ok(Member {
            coordinator,
            internal,
            _data: data,
        })
    }

    /// The directory the setup's files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Member {
    /// This member's id, from `GET /status`.
    pub async fn id(&self) -> Result<String> {
        let (_, status) = self.coordinator.get("/status").await?;
        status["cluster"]["member"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no cluster member in /status: {status}"))
    }
}
