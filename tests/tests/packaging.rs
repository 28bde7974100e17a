//! Packaging: `tracesd enroll` end to end against the real coordinator (config written with
//! mode 0600, then `tracesd --config THAT_FILE` appears connected), its error reports, the
//! packaged configuration files, the systemd units (`systemd-analyze verify`) and the man pages
//! kept in sync with `--help`. Building and installing the .deb files themselves is
//! `packaging/build-debs.sh` and `packaging/install-test.sh`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tracevisor_tests::agents::{client, free_port, is_connected, wait_clients};
use tracevisor_tests::coordinator::{binary, Coordinator};
use tracevisor_tests::temp_dir;

/// Generous bound for processes starting and links connecting on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);

const TOKEN: &str = "packaging-test-agent-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn packaging(path: &str) -> PathBuf {
    workspace().join("packaging").join(path)
}

/// `tracesd ARGS` with no `TRACESD_*` variable from the test's environment.
fn tracesd() -> Command {
    let mut cmd = Command::new(binary("tracesd").unwrap());
    for var in [
        "TRACESD_COORDINATOR",
        "TRACESD_TOKEN",
        "TRACESD_HOSTNAME",
        "TRACESD_CA_CERT",
        "TRACESD_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tracesd enroll ARGS` with the token in `TRACESD_TOKEN`.
fn enroll(token: &str, args: &[&str]) -> Output {
    tracesd()
        .arg("enroll")
        .args(args)
        .env("TRACESD_TOKEN", token)
        .output()
        .unwrap()
}

/// A child process killed when the test ends, whatever happens.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agent_connects_with_the_written_config() {
    let dir = temp_dir("tv-pkg-");
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let config = dir.path().join("etc/tracevisor/tracesd.toml");
    let config_arg = config.to_str().unwrap();
    let url = format!("http://{}", c.addr);

    let output = enroll(
        TOKEN,
        &[
            "--coordinator",
            &url,
            "--hostname",
            "pkg-enrolled",
            "--config",
            config_arg,
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("coordinator: enrollment token accepted, this host's own credential issued"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("config: wrote {config_arg} (mode 0600)")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "next step: run the agent with `tracesd --config {config_arg}`"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    let metadata = std::fs::metadata(&config).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains(&format!("coordinator = \"{url}\"\n")),
        "{written}"
    );
    assert!(written.contains("credential = \"tvc1_"), "{written}");
    assert!(
        !written.contains(TOKEN),
        "the enrollment token is not kept on the host: {written}"
    );
    assert!(
        written.contains("hostname = \"pkg-enrolled\"\n"),
        "{written}"
    );
    // Enrolling registered nothing: it sent no hello.
    let list = tracevisor_tests::agents::clients(&c).await.unwrap();
    assert!(client(&list, "pkg-enrolled").is_none(), "{list:?}");

    // The agent started the way tracesd.service starts it.
    let agent = tracesd()
        .arg("--config")
        .arg(&config)
        .env("TRACESD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent = Running(agent);
    let list = wait_clients(&c, "pkg-enrolled connected", PATIENCE, |list| {
        is_connected(list, "pkg-enrolled")
    })
    .await
    .unwrap();
    let record = client(&list, "pkg-enrolled").unwrap();
    assert_eq!(record["agent"]["connected"], true, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_reports_wrong_tokens_unreachable_coordinators_and_invalid_values() {
    let dir = temp_dir("tv-pkg-");
    let c = Coordinator::start(dir.path(), &["--agent-token", TOKEN]).unwrap();
    let config = dir.path().join("tracesd.toml");
    let config_arg = config.to_str().unwrap();

    let output = enroll(
        "not-the-agent-token",
        &[
            "--coordinator",
            &format!("ws://{}", c.addr),
            "--config",
            config_arg,
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("refused the enrollment token (HTTP 401 Unauthorized): wrong token?"),
        "{stderr}"
    );
    assert!(!config.exists(), "nothing is written for a refused token");

    let port = free_port().unwrap();
    let output = enroll(
        TOKEN,
        &[
            "--coordinator",
            &format!("ws://127.0.0.1:{port}"),
            "--config",
            config_arg,
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the coordinator at ws://127.0.0.1:{port}/trace/api/v1.0/agents: connection refused"
        )),
        "{stderr}"
    );
    assert!(!config.exists());

    for (args, key) in [
        (vec!["--coordinator", "ftp://h"], "coordinator: "),
        (
            vec!["--coordinator", "ws://h:1", "--hostname", "not_a_name"],
            "hostname: ",
        ),
    ] {
        let mut args = args;
        args.extend(["--config", config_arg]);
        let output = enroll(TOKEN, &args);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(&format!("tracesd enroll: {key}")),
            "{stderr}"
        );
    }
    assert!(!config.exists());

    // The plain invocation still runs the agent: with the packaged (not yet enrolled) config
    // it stops with exit status 2, which tracesd.service does not restart.
    let output = tracesd()
        .arg("--config")
        .arg(packaging("etc/tracesd.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("credential: missing (run `tracesd enroll"),
        "{stdout}\n{stderr}"
    );

    // Plaintext to another host: refused at configuration time, before any connection (the
    // address is one nothing answers on), by the agent and by enroll.
    let output = tracesd()
        .args([
            "--coordinator",
            "ws://192.0.2.77:5000",
            "--hostname",
            "web-1",
        ])
        .env("TRACESD_CREDENTIAL", format!("tvc1_{:016x}_{:064x}", 1, 2))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("coordinator: ws://192.0.2.77 is plaintext"),
        "{stdout}\n{stderr}"
    );
    let output = enroll(
        TOKEN,
        &[
            "--coordinator",
            "http://192.0.2.77:5000",
            "--config",
            config_arg,
        ],
    );
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("insecure_ws"), "{stderr}");
    assert!(!config.exists());
}

#[test]
fn packaged_coordinator_config_is_valid() {
    let args = tracevisor::config::ServeArgs {
        config: Some(packaging("etc/tracevisor.toml")),
        ..Default::default()
    };
    let config = tracevisor::config::Config::load(&args).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:5000");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/tracevisor"));
    assert!(
        !config.local_agent,
        "hosts are traced by the tracesd package, not by the coordinator's sandboxed user"
    );
    assert_eq!(config.db, "surrealkv:///var/lib/tracevisor/db");
}

/// The `KEY=VALUE` lines of a unit file's section.
fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(packaging(&format!("systemd/{unit}"))).unwrap();
    let mut current = String::new();
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_owned();
        } else if current == format!("[{section}]") {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    values.push(v.trim().to_owned());
                }
            }
        }
    }
    values
}

#[test]
fn units_run_the_packaged_binaries_with_the_packaged_configs() {
    let one = |unit: &str, key: &str| {
        let values = unit_values(unit, "Service", key);
        assert_eq!(values.len(), 1, "{unit}: {key} = {values:?}");
        values[0].clone()
    };
    assert_eq!(
        one("tracevisor.service", "ExecStart"),
        "/usr/bin/tracevisor serve --config /etc/tracevisor/tracevisor.toml"
    );
    assert_eq!(one("tracevisor.service", "User"), "tracevisor");
    assert_eq!(one("tracevisor.service", "StateDirectory"), "tracevisor");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(one("tracevisor.service", key), value, "{key}");
    }
    assert_eq!(
        one("tracesd.service", "ExecStart"),
        format!(
            "/usr/bin/tracesd --config {}",
            tracesd::enroll::DEFAULT_CONFIG
        )
    );
    assert!(
        unit_values("tracesd.service", "Service", "User").is_empty(),
        "tracesd runs as root"
    );
    assert_eq!(one("tracesd.service", "Restart"), "on-failure");
    assert_eq!(one("tracesd.service", "RestartPreventExitStatus"), "2");
    let after = unit_values("tracesd.service", "Unit", "After").join(" ");
    assert!(after.contains("lttng-sessiond.service"), "{after}");
    assert!(after.contains("network-online.target"), "{after}");
    assert_eq!(tracesd::enroll::SERVICE, "tracesd.service");
    assert!(one("lttng-relayd.service", "ExecStart").starts_with("/usr/bin/lttng-relayd "));
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(analyze) = tracevisor_lttng::runner::find_in_path("systemd-analyze") else {
        let message = "SKIPPED systemd_analyze_verify_accepts_the_units: needs systemd-analyze (install systemd)";
        assert!(!tracevisor_tests::skip::require_all(), "{message}");
        eprintln!("{message}");
        return;
    };
    // Offline, in a scratch root: the system's units, the packaged ones, and executables at
    // the paths the units name (verify checks that ExecStart= programs exist).
    let root = temp_dir("tv-units-");
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg("/lib/systemd/system/.")
        .arg(&units)
        .status()
        .unwrap();
    assert!(copied.success());
    let names = [
        "tracevisor.service",
        "tracesd.service",
        "lttng-relayd.service",
    ];
    for name in names {
        std::fs::copy(packaging(&format!("systemd/{name}")), units.join(name)).unwrap();
    }
    for program in ["tracevisor", "tracesd", "lttng-relayd"] {
        let path = root.path().join("usr/bin").join(program);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let output = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.path().display()))
        .args(names)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        format!("{stdout}{stderr}").trim(),
        "",
        "systemd-analyze verify printed warnings"
    );
}

/// The long flags (`--name`) of the option lines of a `--help` output, and its command names
/// (`help` left out).
fn help_of(program: &str, args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let output = Command::new(binary(program).unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let (mut flags, mut commands) = (BTreeSet::new(), BTreeSet::new());
    let mut block = "";
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            block = line;
            continue;
        }
        if !line.starts_with("  ") {
            block = "";
            continue;
        }
        let mut words = line.split_whitespace();
        match block {
            "Options:" => {
                if let Some(flag) = words.find(|w| w.starts_with("--")) {
                    flags.insert(flag.trim_end_matches(',').to_owned());
                }
            }
            "Commands:" => {
                if let Some(command) = words.next().filter(|c| *c != "help") {
                    commands.insert(command.to_owned());
                }
            }
            _ => {}
        }
    }
    (flags, commands)
}

fn help_flags(program: &str, args: &[&str]) -> BTreeSet<String> {
    help_of(program, args).0
}

/// Per `.SH` section of a man page, the words of its `.TP` item lines: the long flags, and the
/// first word of items that are not flags (command names).
struct ManPage {
    flags: std::collections::BTreeMap<String, BTreeSet<String>>,
    items: std::collections::BTreeMap<String, BTreeSet<String>>,
}

fn man_page(page: &str) -> ManPage {
    let text = std::fs::read_to_string(packaging(&format!("man/{page}"))).unwrap();
    let mut page = ManPage {
        flags: Default::default(),
        items: Default::default(),
    };
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix(".SH ") {
            section = name.trim_matches('"').to_owned();
        } else if line == ".TP" {
            let item = lines.next().unwrap_or_default().replace("\\-", "-");
            let words: Vec<&str> = item
                .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .filter(|w| !w.is_empty())
                .collect();
            let flags: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| w.starts_with("--"))
                .collect();
            if flags.is_empty() {
                if let Some(name) = words.get(1) {
                    page.items
                        .entry(section.clone())
                        .or_default()
                        .insert((*name).to_owned());
                }
            }
            for flag in flags {
                page.flags
                    .entry(section.clone())
                    .or_default()
                    .insert(flag.to_owned());
            }
        }
    }
    page
}

#[test]
fn man_pages_list_exactly_the_flags_and_commands_of_help() {
    let tracevisor = man_page("tracevisor.1");
    let (global, commands) = help_of("tracevisor", &["--help"]);
    assert_eq!(
        tracevisor.flags.get("GLOBAL OPTIONS"),
        Some(&global),
        "tracevisor.1 GLOBAL OPTIONS vs tracevisor --help"
    );
    assert_eq!(
        tracevisor.items.get("COMMANDS"),
        Some(&commands),
        "tracevisor.1 COMMANDS vs tracevisor --help"
    );
    let serve = help_flags("tracevisor", &["serve", "--help"]);
    assert_eq!(
        help_flags("tracevisor", &["agent-token", "--help"]),
        serve,
        "agent-token takes the options of serve (the man page says so)"
    );
    assert_eq!(
        tracevisor.flags.get("SERVE OPTIONS"),
        Some(&serve),
        "tracevisor.1 SERVE OPTIONS vs tracevisor serve --help"
    );

    let tracesd = man_page("tracesd.1");
    let (flags, commands) = help_of("tracesd", &["--help"]);
    assert_eq!(
        tracesd.flags.get("OPTIONS"),
        Some(&flags),
        "tracesd.1 OPTIONS vs tracesd --help"
    );
    assert_eq!(
        commands,
        BTreeSet::from(["enroll".to_owned(), "ssh-job".to_owned()])
    );
    assert_eq!(
        tracesd.flags.get("SSH-JOB OPTIONS"),
        Some(&help_flags("tracesd", &["ssh-job", "--help"])),
        "tracesd.1 SSH-JOB OPTIONS vs tracesd ssh-job --help"
    );
    assert_eq!(
        tracesd.flags.get("ENROLL OPTIONS"),
        Some(&help_flags("tracesd", &["enroll", "--help"])),
        "tracesd.1 ENROLL OPTIONS vs tracesd enroll --help"
    );
}
