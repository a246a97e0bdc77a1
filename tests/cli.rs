//! The command line as a user meets it: help texts, `config check` on good and bad files, and `serve` with no configuration at all.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

type Run = support::access::CliRun;

/// Runs lank8s with `args` in `cwd`, killing it (by its own handle) if it
/// has not exited within ten seconds.
fn lank8s(args: &[&str], cwd: &Path) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
    cmd.args(args).current_dir(cwd);
    support::access::run_to_end(cmd, None, Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread")]
async fn help_explains_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--help"], &["pull-through mirror", "serve", "config"]),
        (
            &["serve", "--help"],
            &["Run the mirror", "--config", "--listen", "--data-dir"],
        ),
        (&["config", "--help"], &["configuration files", "check"]),
        (
            &["config", "check", "--help"],
            &["Validate a file and print the effective routes"],
        ),
    ];
    for (args, phrases) in cases {
        let run = lank8s(args, dir.path());
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        for phrase in phrases {
            assert!(
                run.stdout.contains(phrase),
                "{args:?} lacks {phrase:?}:\n{}",
                run.stdout
            );
        }
    }
}

/// `left -> right` lines keyed by the first name on the left.
fn routes(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(" -> "))
        .map(|(left, right)| {
            let name = left.trim().split(", ").next().unwrap_or_default();
            let target = right.split_whitespace().next().unwrap_or_default();
            (name.to_owned(), target.trim_end_matches('/').to_owned())
        })
        .collect()
}

const BUILTINS: [(&str, &str); 7] = [
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("k8s.gcr.io", "https://registry.k8s.io"),
    ("gcr.io", "https://gcr.io"),
    (
        "us-central1-docker.pkg.dev",
        "https://us-central1-docker.pkg.dev",
    ),
    ("docker.io", "https://registry-1.docker.io"),
    ("quay.io", "https://quay.io"),
    ("ghcr.io", "https://ghcr.io"),
];

fn check_file(dir: &Path, text: &str) -> Run {
    let file = dir.join("lank8s.toml");
    std::fs::write(&file, text).expect("write config");
    lank8s(&["config", "check", file.to_str().unwrap()], dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_prints_the_effective_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = check_file(dir.path(), "");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let want: HashMap<String, String> = BUILTINS
        .iter()
        .map(|(name, url)| (name.to_string(), url.to_string()))
        .collect();
    assert_eq!(routes(&run.stdout), want, "{}", run.stdout);

    let text = "domain = \"mirror.example\"\n\
                [upstreams.\"registry.k8s.io\"]\nurl = \"http://127.0.0.1:5999\"\n\
                [upstreams.\"registry.internal\"]\nurl = \"https://registry.internal\"\n";
    let run = check_file(dir.path(), text);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut want = want;
    want.insert("registry.k8s.io".into(), "http://127.0.0.1:5999".into());
    want.insert(
        "registry.internal".into(),
        "https://registry.internal".into(),
    );
    for (host, upstream) in [
        ("mirror.example", "registry.k8s.io"),
        ("registry.mirror.example", "registry.k8s.io"),
        ("gcr.mirror.example", "gcr.io"),
        ("k8s.mirror.example", "k8s.gcr.io"),
        ("docker.mirror.example", "docker.io"),
        (
            "us-central1-docker.pkgdev.mirror.example",
            "us-central1-docker.pkg.dev",
        ),
    ] {
        want.insert(host.into(), upstream.into());
    }
    assert_eq!(routes(&run.stdout), want, "{}", run.stdout);
}

/// Invalid files and the key each message must name.
const BAD: [(&str, &str); 7] = [
    ("lissten = \"127.0.0.1:5000\"\n", "lissten"),
    ("listen = \"nowhere\"\n", "listen"),
    (
        "[upstreams.\"x.io\"]\nretries = 1\n",
        "upstreams.\"x.io\".url",
    ),
    ("[upstreams.\"gcr.io\"]\ntag_ttl = \"soon\"\n", "tag_ttl"),
    ("[log]\nformat = \"xml\"\n", "log.format"),
    ("default_upstream = \"nope.io\"\n", "default_upstream"),
    ("data_dir = \"unterminated\n", "data_dir"),
];

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lank8s.toml");
    let file_arg = file.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    for (text, key) in BAD {
        let run = check_file(dir.path(), text);
        assert_eq!(run.code, Some(2), "check {text:?}: {}", run.stderr);
        assert!(run.stderr.contains(key), "check {text:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(file_arg),
            "check {text:?}: {}",
            run.stderr
        );
        // Were the file wrongly accepted, serve would stay on loopback and be killed.
        let args = ["serve", "--config", file_arg, "--listen", &listen];
        let run = lank8s(&args, dir.path());
        assert_eq!(run.code, Some(2), "serve {text:?}: {}", run.stderr);
        assert!(run.stderr.contains(key), "serve {text:?}: {}", run.stderr);
    }
    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["config", "check", missing],
        vec!["serve", "--config", missing, "--listen", &listen],
    ] {
        let run = lank8s(&args, dir.path());
        assert!(
            run.code.is_some_and(|c| c != 0),
            "{args:?} exited {:?}",
            run.code
        );
        assert!(run.stderr.contains(missing), "{args:?}: {}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_a_config_is_a_working_mirror() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log_path = logs.path().join("lank8s.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let mut child = Some(cmd.spawn().expect("spawn lank8s serve"));
    let url = format!("http://127.0.0.1:{port}/v2/");
    let ready = eventually(Duration::from_secs(10), || {
        let exited = child.as_mut().unwrap().try_wait().ok().flatten();
        let url = url.clone();
        async move {
            if let Some(status) = exited {
                return Some(Err(format!("exited with {status}")));
            }
            let response = http_client().get(&url).send().await.ok()?;
            let status = response.status().as_u16();
            let version = response
                .headers()
                .get("docker-distribution-api-version")
                .cloned();
            Some(Ok((status, version, response.bytes().await.ok()?)))
        }
    })
    .await;
    let data_dir = cwd.path().join("lank8s-data");
    let data_dir_exists = data_dir.is_dir();
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let (status, version, body) = match ready {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => panic!("lank8s serve {e}:\n{log}"),
        None => panic!("lank8s serve never answered {url}:\n{log}"),
    };
    assert_eq!(status, 200, "{log}");
    assert_eq!(
        version.as_ref().map(|v| v.as_bytes()),
        Some(&b"registry/2.0"[..])
    );
    assert_eq!(&body[..], b"{}");
    assert!(
        data_dir_exists,
        "{} was not created:\n{log}",
        data_dir.display()
    );
}

/// A configuration whose state store is the embedded file in a fresh data
/// directory, for the `account` and `grants` commands.
fn state_config(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("lank8s.toml");
    let data_dir = serde_json::to_string(&dir.join("data").display().to_string()).unwrap();
    std::fs::write(&file, format!("data_dir = {data_dir}\n")).expect("write config");
    file
}

/// The UTC date `days` from now, as `account` prints it (YYYY-MM-DD).
fn date_in(days: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn account_add_prints_a_generated_password_once_and_reads_one_from_stdin() {
    use support::access::{cli, cli_ok, client_at, loopback, token_reply};
    let lank8s = Lank8s::start("").await;
    let config = lank8s.config_path();
    let client = client_at(loopback(1));

    let (before, run, after) = (
        date_in(30),
        cli(config, &["account", "add", "alice", "--days", "30"], None),
        date_in(30),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    let described = |date: &str| format!("alice  tier=sponsor  expires={date}T");
    assert!(
        lines[0].starts_with(&described(&before)) || lines[0].starts_with(&described(&after)),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with("  status=active"), "{}", lines[0]);
    let password = lines[1]
        .strip_prefix("password: ")
        .expect("a password line");
    assert!(
        password.len() >= 16,
        "a short generated password: {password:?}"
    );
    for args in [&["account", "show", "alice"][..], &["account", "list"]] {
        let out = cli_ok(config, args, None);
        assert!(
            !out.contains(password),
            "{args:?} printed the password again: {out}"
        );
    }
    let login = token_reply(&client, &lank8s, "alice", password, "any/repo").await;
    assert_eq!(
        login.status,
        200,
        "the printed password logs in: {}",
        login.describe()
    );

    let run = cli(
        config,
        &["account", "add", "bob", "--password-stdin"],
        Some("bob-chose-this\n"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.starts_with("bob  tier=sponsor  expires="),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("password") && !run.stdout.contains("bob-chose-this"),
        "a password read from stdin is never printed: {}",
        run.stdout
    );
    let login = token_reply(&client, &lank8s, "bob", "bob-chose-this", "any/repo").await;
    assert_eq!(login.status, 200, "{}", login.describe());
    let wrong = token_reply(&client, &lank8s, "bob", "bob-chose-that", "any/repo").await;
    assert_eq!(wrong.status, 401, "control: {}", wrong.describe());

    let run = cli(
        config,
        &["account", "add", "carl", "--password-stdin"],
        Some("short\n"),
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("at least 8 characters"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_are_listed_shown_extended_disabled_and_enabled() {
    use support::access::cli_ok;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = state_config(dir.path());
    assert_eq!(cli_ok(&config, &["account", "list"], None), "no accounts\n");
    let out = cli_ok(
        &config,
        &[
            "account",
            "add",
            "alice",
            "--until",
            "2031-01-31",
            "--password-stdin",
        ],
        Some("alice-password\n"),
    );
    // --until is the last valid day: the account expires as it ends.
    let alice = |expires: &str, status: &str| {
        format!("alice  tier=sponsor  expires={expires}  status={status}\n")
    };
    assert_eq!(out, alice("2031-02-01T00:00:00Z", "active"));
    cli_ok(
        &config,
        &[
            "account",
            "add",
            "old",
            "--until",
            "2020-01-01",
            "--password-stdin",
        ],
        Some("old-password\n"),
    );
    let old = "old  tier=sponsor  expires=2020-01-02T00:00:00Z  status=expired\n";
    let list = cli_ok(&config, &["account", "list"], None);
    let mut lines: Vec<&str> = list.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            alice("2031-02-01T00:00:00Z", "active").trim_end(),
            old.trim_end()
        ]
    );
    assert_eq!(cli_ok(&config, &["account", "show", "old"], None), old);

    let steps: [(&[&str], String); 5] = [
        (
            &["extend", "alice", "--until", "2032-06-30"],
            alice("2032-07-01T00:00:00Z", "active"),
        ),
        // --days counts from the current expiry when it is later than now.
        (
            &["extend", "alice", "--days", "10"],
            alice("2032-07-11T00:00:00Z", "active"),
        ),
        (&["show", "alice"], alice("2032-07-11T00:00:00Z", "active")),
        (
            &["disable", "alice"],
            alice("2032-07-11T00:00:00Z", "disabled") + "revoked 0 grants\n",
        ),
        (
            &["enable", "alice"],
            alice("2032-07-11T00:00:00Z", "active"),
        ),
    ];
    for (args, want) in steps {
        let args: Vec<&str> = ["account"].iter().chain(args).copied().collect();
        assert_eq!(cli_ok(&config, &args, None), want, "{args:?}");
    }
    let shown = cli_ok(&config, &["account", "show", "alice"], None);
    assert_eq!(shown, alice("2032-07-11T00:00:00Z", "active"));
    // Extending an expired account counts from today.
    let out = cli_ok(&config, &["account", "extend", "old", "--days", "3"], None);
    assert!(
        out.starts_with(&format!("old  tier=sponsor  expires={}T", date_in(3)))
            && out.ends_with("  status=active\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn account_and_grants_mistakes_exit_with_their_status() {
    use support::access::{cli, cli_ok};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = state_config(dir.path());
    cli_ok(
        &config,
        &["account", "add", "alice", "--password-stdin"],
        Some("alice-password\n"),
    );
    let cases: [(&[&str], Option<&str>, i32, &str); 6] = [
        (
            &["account", "add", "alice", "--password-stdin"],
            Some("another-password\n"),
            1,
            "account \"alice\" already exists",
        ),
        (
            &[
                "account",
                "add",
                "gary",
                "--tier",
                "gold",
                "--password-stdin",
            ],
            Some("gary-password\n"),
            2,
            "--tier",
        ),
        (
            &[
                "account",
                "add",
                "dora",
                "--until",
                "2031-13-45",
                "--password-stdin",
            ],
            Some("dora-password\n"),
            2,
            "--until",
        ),
        (
            &["account", "show", "nobody"],
            None,
            1,
            "no account named \"nobody\"",
        ),
        (
            &["account", "disable", "nobody"],
            None,
            1,
            "no account named \"nobody\"",
        ),
        (
            &["grants", "revoke", "127.0.0.9"],
            None,
            1,
            "no grant covers 127.0.0.9/32",
        ),
    ];
    for (args, stdin, code, phrase) in cases {
        let run = cli(&config, args, stdin);
        assert_eq!(run.code, Some(code), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(phrase),
            "{args:?} lacks {phrase:?}: {}",
            run.stderr
        );
    }
    // The refused commands changed nothing.
    let list = cli_ok(&config, &["account", "list"], None);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.starts_with("alice  tier=sponsor  "), "{list}");
    assert_eq!(cli_ok(&config, &["grants", "list"], None), "no grants\n");
}
