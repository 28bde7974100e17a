//! A real OpenSSH server for tests: `/usr/sbin/sshd -D -e -f CFG` on a free 127.0.0.1 port with its own ed25519 host key and authorized keys in a temp dir, killed on drop.
//!
//! Needs root (sshd opens `/run/sshd` and switches users). Logins go to the user running the
//! tests (root) with key authentication only.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lttng::{free_ports, run_tool_ok, terminate};

const SSHD: &str = "/usr/sbin/sshd";

/// An ed25519 key pair written by `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file (give it to `ssh -i` or the openssh crate's `keyfile`).
    pub private_key: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
}

/// Generate an ed25519 key pair without passphrase as `dir/name` and `dir/name.pub`.
pub fn generate_keypair(dir: &Path, name: &str) -> Result<KeyPair> {
    let private_key = dir.join(name);
    let _ = std::fs::remove_file(&private_key);
    let _ = std::fs::remove_file(private_key.with_extension("pub"));
    run_tool_ok(
        "ssh-keygen",
        &[
            "-q".as_ref(),
            "-t".as_ref(),
            "ed25519".as_ref(),
            "-N".as_ref(),
            "".as_ref(),
            "-C".as_ref(),
            format!("tracevisor-test-{name}").as_ref(),
            "-f".as_ref(),
            private_key.as_os_str(),
        ] as &[&std::ffi::OsStr],
        Duration::from_secs(30),
    )?;
    let public_key = std::fs::read_to_string(pub_path(&private_key))
        .context("ssh-keygen wrote no public key")?
        .trim()
        .to_string();
    Ok(KeyPair {
        private_key,
        public_key,
    })
}

fn pub_path(private_key: &Path) -> PathBuf {
    let mut p = private_key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// A running sshd; see the module doc.
#[derive(Debug)]
pub struct Sshd {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Start sshd on a free port accepting the given `authorized_keys` content (one or more
    /// public key lines).
    pub fn start(authorized_keys: &str) -> Result<Sshd> {
        Self::start_at(authorized_keys, None)
    }

    /// Start sshd on 127.0.0.1:`port` (for hosts reached without a port setting, on 22).
    pub fn start_on_port(authorized_keys: &str, port: u16) -> Result<Sshd> {
        Self::start_at(authorized_keys, Some(port)).with_context(|| {
            format!("cannot start sshd on 127.0.0.1:{port} (is another sshd listening there?)")
        })
    }

    fn start_at(authorized_keys: &str, port: Option<u16>) -> Result<Sshd> {
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        let dir = tempfile::Builder::new().prefix("tv-sshd-").tempdir()?;
        generate_keypair(dir.path(), "ssh_host_ed25519_key")?;
        let mut sshd = Sshd {
            child: None,
            port: 0,
            dir,
        };
        sshd.set_authorized_keys(authorized_keys)?;
        let mut last_err = None;
        for _ in 0..5 {
            sshd.port = match port {
                Some(port) => port,
                None => free_ports(1)?[0],
            };
            match sshd.launch() {
                Ok(()) => return Ok(sshd),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("sshd did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding the config, host key, authorized keys, pid file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host public key line, `ssh-ed25519 AAAA... comment`.
    pub fn host_public_key(&self) -> Result<String> {
        Ok(std::fs::read_to_string(pub_path(&self.host_key_path()))?
            .trim()
            .to_string())
    }

    /// A known_hosts line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> Result<String> {
        let key = self.host_public_key()?;
        let mut parts = key.split_whitespace();
        let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        Ok(format!("[127.0.0.1]:{} {kind} {blob}", self.port))
    }

    /// Replace the authorized keys (read by sshd at each login, no restart needed).
    pub fn set_authorized_keys(&self, authorized_keys: &str) -> Result<()> {
        let mut text = authorized_keys.trim().to_string();
        text.push('\n');
        std::fs::write(self.dir.path().join("authorized_keys"), text)?;
        Ok(())
    }

    /// Generate a new host key and restart sshd on the same port ("host key changed" tests);
    /// returns the new host public key line.
    pub fn rotate_host_key(&mut self) -> Result<String> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2));
        }
        generate_keypair(self.dir.path(), "ssh_host_ed25519_key")?;
        self.launch()?;
        self.host_public_key()
    }

    /// sshd's log (`-e`: everything it logs goes to stderr, captured here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("ssh_host_ed25519_key")
    }

    fn launch(&mut self) -> Result<()> {
        let d = self.dir.path();
        let config = d.join("sshd_config");
        let text = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized}\n\
             PidFile {pid}\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             StrictModes no\n\
             UsePAM no\n\
             UseDNS no\n\
             MaxSessions 64\n\
             MaxStartups 64:30:128\n\
             LogLevel VERBOSE\n",
            port = self.port,
            host_key = self.host_key_path().display(),
            authorized = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(&config, text)?;
        run_tool_ok(
            SSHD,
            &["-t".as_ref(), "-f".as_ref(), config.as_os_str()] as &[&std::ffi::OsStr],
            Duration::from_secs(10),
        )
        .context("sshd rejects its test configuration")?;
        let log_path = d.join("sshd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start /usr/sbin/sshd")?;
        // Ready when the port answers with the SSH banner.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("sshd exited at start ({status}): {}", self.log().trim());
            }
            if banner(&addr).is_some_and(|b| b.starts_with("SSH-2.0-")) {
                break;
            }
            if Instant::now() > deadline {
                terminate(&mut child, Duration::from_secs(1));
                bail!("sshd does not answer on {addr}: {}", self.log().trim());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }
}

fn banner(addr: &SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2));
        }
    }
}
