//! Secrets kept in the data directory: the REST and agent tokens and the coordinator's SSH key pair.
//!
//! Files are created with mode 0600 and written atomically (temporary file, fsync, rename), so a
//! crash never leaves a half-written secret behind.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

/// File names inside the data directory.
pub const REST_TOKEN_FILE: &str = "api-token";
pub const AGENT_TOKEN_FILE: &str = "agent-token";
pub const SSH_KEY_FILE: &str = "ssh/id_ed25519";

/// A failure to read or create a secret; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SecretError {
    pub path: String,
    pub message: String,
}

fn secret_err(path: &Path, message: impl std::fmt::Display) -> SecretError {
    SecretError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Writes `contents` to `path` with the given mode, atomically.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), SecretError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| secret_err(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| secret_err(&tmp, e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| secret_err(&tmp, e))?;
    file.write_all(contents).map_err(|e| secret_err(&tmp, e))?;
    file.sync_all().map_err(|e| secret_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| secret_err(path, e))?;
    Ok(())
}

/// A fresh random token: 32 bytes as 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the token stored in `data_dir/name`, creating it (0600) when absent.
pub fn load_or_create_token(data_dir: &Path, name: &str) -> Result<String, SecretError> {
    let path = data_dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => {
            check_private(&path)?;
            let token = text.trim().to_owned();
            if token.len() < 16 {
                return Err(secret_err(
                    &path,
                    "token is shorter than 16 characters; delete the file to regenerate it",
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            write_private(&path, format!("{token}\n").as_bytes(), 0o600)?;
            tracing::info!(path = %path.display(), "generated a new token");
            Ok(token)
        }
        Err(e) => Err(secret_err(&path, e)),
    }
}

/// Reads a stored token without creating it.
pub fn read_token(data_dir: &Path, name: &str) -> Result<String, SecretError> {
    let path = data_dir.join(name);
    fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| secret_err(&path, e))
}

/// Reads a secret from a file that only its owner may read (mode 0600 or stricter), trimmed.
pub fn read_private_file(path: &Path) -> Result<String, SecretError> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(|e| secret_err(path, e))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(secret_err(path, "the file is empty"));
    }
    Ok(secret)
}

/// Refuses a secret file that others can read.
fn check_private(path: &Path) -> Result<(), SecretError> {
    let mode = fs::metadata(path)
        .map_err(|e| secret_err(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(secret_err(
            path,
            format!(
                "mode {:o} lets other users read it; chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// The coordinator's SSH identity.
#[derive(Debug, Clone)]
pub struct SshIdentity {
    /// Private key file (OpenSSH format, 0600).
    pub private_key: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... tracevisor@HOST`.
    pub public_key: String,
}

/// Loads the SSH key pair from the data directory, generating an ed25519 pair on first start.
pub fn load_or_create_ssh_key(data_dir: &Path) -> Result<SshIdentity, SecretError> {
    let private_path = data_dir.join(SSH_KEY_FILE);
    let public_path = private_path.with_extension("pub");
    if private_path.exists() {
        check_private(&private_path)?;
        let key = PrivateKey::read_openssh_file(&private_path)
            .map_err(|e| secret_err(&private_path, e))?;
        let public_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| secret_err(&private_path, e))?;
        return Ok(SshIdentity {
            private_key: private_path,
            public_key,
        });
    }
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .map_err(|e| secret_err(&private_path, e))?;
    key.set_comment(format!("tracevisor@{}", local_hostname()));
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| secret_err(&private_path, e))?;
    let public_key = key
        .public_key()
        .to_openssh()
        .map_err(|e| secret_err(&public_path, e))?;
    write_private(&private_path, private.as_bytes(), 0o600)?;
    write_private(&public_path, format!("{public_key}\n").as_bytes(), 0o644)?;
    tracing::info!(path = %private_path.display(), "generated the coordinator ssh key");
    Ok(SshIdentity {
        private_key: private_path,
        public_key,
    })
}

/// This machine's host name.
pub fn local_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Compares two secrets in constant time (for equal lengths).
pub fn secret_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_keys_are_private_and_stable() {
        let dir = tempfile_dir();
        let t1 = load_or_create_token(&dir, AGENT_TOKEN_FILE).unwrap();
        let t2 = load_or_create_token(&dir, AGENT_TOKEN_FILE).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(
            fs::metadata(dir.join(AGENT_TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let k1 = load_or_create_ssh_key(&dir).unwrap();
        let k2 = load_or_create_ssh_key(&dir).unwrap();
        assert_eq!(k1.public_key, k2.public_key);
        assert!(
            k1.public_key.starts_with("ssh-ed25519 ") && k1.public_key.contains(" tracevisor@")
        );
        assert_eq!(
            fs::metadata(&k1.private_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(
            dir.join(AGENT_TOKEN_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(load_or_create_token(&dir, AGENT_TOKEN_FILE).is_err());
        assert!(secret_eq("abc", "abc") && !secret_eq("abc", "abd") && !secret_eq("abc", "ab"));
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tv-secrets-{}", new_token()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
