//! The client configuration `lank8s hosts` generates, used as it is: skopeo with the generated registries.conf pulls `registry.k8s.io/...` and `gcr.io/...` through lank8s (nothing else is reachable), and the files `--out` writes are exactly what stdout mode prints.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::process::Command;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a command to completion within [`COMMAND_TIMEOUT`], with an empty
/// HOME and no proxy variables; returns its stdout, or a description of
/// its failure.
async fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let home = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    cmd.env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd.spawn().map_err(|e| format!("spawn {what}: {e}"))?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} timed out after {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("waiting for {what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `lank8s hosts --mirror <mirror> --config <config> [--out <out>]`.
async fn lank8s_hosts(mirror: &str, config: &Path, out: Option<&Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
    cmd.args(["hosts", "--mirror", mirror, "--config"])
        .arg(config);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    run(cmd, "lank8s hosts")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every file under `dir`, by path relative to it.
fn files_under(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, found);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                found.insert(relative, std::fs::read_to_string(&path).expect("read file"));
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(dir, dir, &mut found);
    found
}

/// Splits stdout mode's `# ==> <path> <==` sections back into files.
fn printed_files(stdout: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut sections = stdout.split("# ==> ");
    assert_eq!(sections.next(), Some(""), "output starts with a header");
    for section in sections {
        let (path, contents) = section.split_once(" <==\n").expect("a header line");
        // println! adds one newline after each file's contents.
        let contents = contents.strip_suffix('\n').expect("newline after a file");
        files.insert(path.to_string(), contents.to_string());
    }
    files
}

/// gcr.io is a sponsor route by default; here it is opened to everyone.
fn lank8s_config(k8s: &Registry, gcr: &Registry) -> String {
    format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n\n[upstreams.\"gcr.io\"]\nurl = \"{}\"\ntier = \"free\"\n",
        k8s.url(),
        gcr.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_with_generated_registries_conf_pulls_through_lank8s() {
    let k8s = Registry::start().await;
    let gcr = Registry::start().await;
    let pause = TestImage::oci_index(3100);
    pause.push(&k8s, "pause", "3.10").await;
    let distroless = TestImage::docker_list(3200);
    distroless.push(&gcr, "distroless/static", "nonroot").await;
    let lank8s = Lank8s::start(&lank8s_config(&k8s, &gcr)).await;

    let work = tempfile::tempdir().expect("tempdir");
    let generated = work.path().join("generated");
    let mirror = format!("http://{}", lank8s.host());
    lank8s_hosts(&mirror, lank8s.config_path(), Some(&generated)).await;
    let drop_in = generated.join("containers/registries.conf.d/50-lank8s.conf");
    let registries_conf = work.path().join("registries.conf");
    std::fs::copy(&drop_in, &registries_conf).expect("copy the generated drop-in");

    let pulls = [
        (
            "docker://registry.k8s.io/pause:3.10".to_string(),
            &pause,
            "/v2/registry.k8s.io/pause/manifests/3.10",
        ),
        (
            format!("docker://registry.k8s.io/pause@{}", pause.top_digest()),
            &pause,
            "",
        ),
        (
            "docker://gcr.io/distroless/static:nonroot".to_string(),
            &distroless,
            "/v2/gcr.io/distroless/static/manifests/nonroot",
        ),
    ];
    for (i, (src, image, _)) in pulls.iter().enumerate() {
        let dest = work.path().join(format!("pull-{i}"));
        // No --src-tls-verify: plain HTTP must come from the drop-in's `insecure`.
        let mut cmd = Command::new("skopeo");
        cmd.arg("--registries-conf")
            .arg(&registries_conf)
            .args(["--insecure-policy", "copy", "--all", "--preserve-digests"])
            .args(["--retry-times=0", src])
            .arg(format!("dir:{}", dest.display()));
        if let Err(e) = run(cmd, &format!("skopeo copy {src}")).await {
            panic!(
                "{e}\nregistries.conf:\n{}\nlank8s log:\n{}",
                std::fs::read_to_string(&registries_conf).unwrap_or_default(),
                lank8s.log()
            );
        }
        compare_dir_with_image(&dest, image);
    }

    // lank8s answered them, routed by the registry name the drop-in put in the path.
    for (upstream, repository, path) in [
        ("registry.k8s.io", "pause", pulls[0].2),
        ("gcr.io", "distroless/static", pulls[2].2),
    ] {
        let line = lank8s
            .wait_for_log_line(Duration::from_secs(5), |l| {
                l["message"] == "request" && l["method"] == "GET" && l["path"] == path
            })
            .await
            .unwrap_or_else(|| panic!("no request line for {path}\n{}", lank8s.log()));
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["upstream"], upstream, "{line}");
        assert_eq!(line["via"], "prefix", "{line}");
        assert_eq!(line["repository"], repository, "{line}");
    }
    let by_digest = format!("/v2/registry.k8s.io/pause/manifests/{}", pause.top_digest());
    let digest_lines: Vec<_> = lank8s
        .request_lines()
        .into_iter()
        .filter(|l| l["path"] == by_digest.as_str())
        .collect();
    assert!(!digest_lines.is_empty(), "{}", lank8s.log());
    assert!(
        digest_lines
            .iter()
            .all(|l| l["status"] == 200 && l["via"] == "prefix")
    );

    // Each upstream saw only its own repository.
    k8s.settle().await;
    gcr.settle().await;
    assert_eq!(k8s.count_requests("GET", "/v2/pause/manifests/3.10"), 1);
    assert_eq!(k8s.count_requests("GET", "distroless"), 0);
    assert_eq!(
        gcr.count_requests("GET", "/v2/distroless/static/manifests/nonroot"),
        1
    );
    assert_eq!(gcr.count_requests("GET", "pause"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_prints_exactly_the_files_it_writes() {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("lank8s.toml");
    std::fs::write(
        &config,
        "[upstreams.\"registry.internal\"]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .expect("write config");
    let mirror = "http://127.0.0.1:5000";

    let printed = printed_files(&lank8s_hosts(mirror, &config, None).await);
    let out = work.path().join("out");
    let said = lank8s_hosts(mirror, &config, Some(&out)).await;
    let written = files_under(&out);
    assert_eq!(printed, written);

    // Seven built-in upstreams and the configured one, two containerd forms
    // each, one for the plain-HTTP mirror's own name, and six files for the
    // other clients.
    assert_eq!(written.len(), 8 * 2 + 1 + 6, "{:?}", written.keys());
    assert_eq!(said, format!("wrote 23 files under {}\n", out.display()));
    assert!(written.contains_key("containerd/certs.d/127.0.0.1:5000/hosts.toml"));
    assert_eq!(
        written["containerd/certs.d/registry.k8s.io/hosts.toml"],
        "server = \"https://registry.k8s.io\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    assert_eq!(
        written["containerd/certs.d/registry.internal/hosts.toml"],
        "server = \"https://registry.internal\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    assert_eq!(
        written["containerd-prefix/certs.d/gcr.io/hosts.toml"],
        "server = \"https://gcr.io\"\n\n[host.\"http://127.0.0.1:5000/v2/gcr.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
    );
    assert!(
        written["containers/registries.conf.d/50-lank8s.conf"].contains(
            "[[registry]]\nprefix = \"registry.internal\"\nlocation = \"registry.internal\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5000/registry.internal\"\ninsecure = true\n"
        ),
        "{}",
        written["containers/registries.conf.d/50-lank8s.conf"]
    );
}
