//! Real clients log in to a sponsor route (embedded state): skopeo with `--src-creds` and with `skopeo login` and an auth file, containerd's `ctr` with `--user`; each is refused without credentials first (401), pulls byte-identical or unpacked images with them, and afterwards pulls anonymously from the same address because of the IP grant its pull earned, logged with the account's name.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::replicas::*;
use support::*;

const PASSWORD: &str = "correct-horse-battery";
const REPO: &str = "team/app";

/// A registry holding `images` as `team/app:<tag>`, and lank8s serving it as the
/// sponsor route `sponsored.test` with one account, `user`.
async fn setup(user: &str, images: &[(&str, &TestImage)]) -> (Registry, Lank8s) {
    let registry = Registry::start().await;
    for (tag, image) in images {
        image.push(&registry, REPO, tag).await;
    }
    let lank8s = Lank8s::start_with(&top_level(None), &tables(&registry.url(), "")).await;
    add_account(lank8s.config_path(), user, PASSWORD);
    (registry, lank8s)
}

/// lank8s's request lines from `from` on, once its log has stopped growing.
async fn lines_since(lank8s: &Lank8s, from: usize) -> Vec<Value> {
    support::storage::settle_log(lank8s).await;
    lank8s.request_lines().split_off(from)
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line[name].as_str().unwrap_or("")
}

/// Every request for the repository after the login (or all of them, when there
/// was none) answered 200 for `account`, and there were some; before the login only
/// 401 challenges, on no account.
fn assert_pulled_as(lines: &[Value], account: &str, what: &str) {
    let login = lines
        .iter()
        .position(|l| field(l, "path") == "/token" && l["status"] == 200)
        .unwrap_or(0);
    let is_repo = |l: &&Value| field(l, "path").starts_with(&format!("/v2/{REPO}/"));
    for line in lines[..login].iter().filter(is_repo) {
        assert_eq!(
            (&line["status"], field(line, "account")),
            (&401.into(), "-"),
            "{what}, before the login: {line}"
        );
    }
    let pulled: Vec<&Value> = lines[login..].iter().filter(is_repo).collect();
    assert!(!pulled.is_empty(), "{what}: no request for {REPO}");
    for line in pulled {
        assert_eq!(
            (&line["status"], field(line, "account")),
            (&200.into(), account),
            "{what}: {line}"
        );
        assert_eq!(field(line, "upstream"), SPONSOR, "{what}: {line}");
    }
}

/// `(method, path, status, account)` of each line.
fn summary(lines: &[Value]) -> Vec<(String, String, u64, String)> {
    lines
        .iter()
        .map(|l| {
            let f = |n| field(l, n).to_string();
            (
                f("method"),
                f("path"),
                l["status"].as_u64().unwrap_or(0),
                f("account"),
            )
        })
        .collect()
}

/// The challenge and message an anonymous client gets for `team/app` on `lank8s`.
async fn assert_refused_from(lank8s: &Lank8s, address: &str) {
    let answer = get(
        &client_from(address),
        &lank8s.url(),
        &format!("/v2/{REPO}/manifests/v1"),
        None,
        None,
    )
    .await;
    let host = lank8s.host();
    assert_eq!(answer.status, 401, "from {address}: {}", answer.describe());
    assert_eq!(
        answer.header("www-authenticate"),
        format!(
            "Bearer realm=\"http://{host}/token\",service=\"{host}\",scope=\"repository:{REPO}:pull\""
        )
    );
    assert_eq!(
        answer.error(),
        (
            "UNAUTHORIZED".to_string(),
            format!(
                "{host} serves {SPONSOR} to sponsors only: log in with a sponsor account, or pull \
                 from an address a sponsor has pulled from; see {SPONSOR_INFO}"
            )
        )
    );
}

/// Runs skopeo with an empty home (no user configuration) and `env`; stdout, or
/// everything it printed.
async fn skopeo(args: &[&str], env: &[(&str, &Path)], stdin: &str) -> Result<String, String> {
    use tokio::io::AsyncWriteExt as _;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .args(args)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        cmd.env(name, value);
    }
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn skopeo");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin");
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("skopeo timed out")
        .expect("wait for skopeo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.success() {
        true => Ok(stdout),
        false => Err(format!(
            "skopeo {args:?}: {}\n{stdout}{stderr}",
            output.status
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_with_src_creds_pulls_and_its_address_is_granted() {
    let image = TestImage::oci_index(501);
    let (registry, lank8s) = setup("alice", &[("v1", &image)]).await;
    let src = format!("docker://{}/{REPO}:v1", lank8s.host());
    let out = tempfile::tempdir().expect("tempdir");

    // Without credentials: skopeo fails, lank8s answered 401, upstream was never asked.
    assert_refused_from(&lank8s, "127.0.0.1").await;
    let before = lank8s.request_lines().len();
    let refused = skopeo_copy_all(&src, &out.path().join("anonymous")).await;
    let err = refused.expect_err("an anonymous copy of a sponsor route must fail");
    assert!(err.contains("sponsors only"), "skopeo's error: {err}");
    // skopeo checks /v2/, is challenged, asks for an anonymous token and gives up.
    let lines = lines_since(&lank8s, before).await;
    let challenged = |path: &str| ("GET".to_string(), path.to_string(), 401, "-".to_string());
    assert_eq!(
        summary(&lines),
        vec![challenged("/v2/"), challenged("/token")],
        "{lines:#?}"
    );
    registry.settle().await;
    assert_eq!(registry.count_requests("GET", "/v2/team/app/"), 0);
    assert_eq!(grants_list(lank8s.config_path()), vec!["no grants"]);

    // With credentials: byte-identical, every request on the account.
    let before = lank8s.request_lines().len();
    let dest = out.path().join("creds");
    let copied = skopeo_copy_all_with_creds(&src, &dest, Some(("alice", PASSWORD))).await;
    copied.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    compare_dir_with_image(&dest, &image);
    let lines = lines_since(&lank8s, before).await;
    assert_pulled_as(&lines, "alice", "pull with --src-creds");
    assert!(
        lines
            .iter()
            .any(|l| field(l, "path") == "/token" && l["status"] == 200),
        "skopeo never logged in: {lines:#?}"
    );
    let grants = grants_list(lank8s.config_path());
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert!(
        grants[0].starts_with("127.0.0.1/32  account=alice  expires="),
        "{grants:?}"
    );

    // Without credentials again, from the same address: the grant opens it, no login.
    let before = lank8s.request_lines().len();
    let dest = out.path().join("granted");
    let granted = skopeo_copy_all(&src, &dest).await;
    granted.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    compare_dir_with_image(&dest, &image);
    let lines = lines_since(&lank8s, before).await;
    assert_pulled_as(&lines, "alice", "granted anonymous pull");
    assert!(
        lines.iter().all(|l| field(l, "path") != "/token"),
        "a granted pull needs no token: {lines:#?}"
    );
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:#?}");

    // The grant is the address's only: another loopback address is still refused.
    assert_refused_from(&lank8s, "127.0.0.2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_login_writes_an_auth_file_that_pulls_and_a_wrong_password_fails() {
    let image = TestImage::docker_list(502);
    let (_registry, lank8s) = setup("bob", &[("v1", &image)]).await;
    let host = lank8s.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_file = dir.path().join("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth_file.as_path())];
    let login_args = [
        "login",
        "--tls-verify=false",
        "-u",
        "bob",
        "--password-stdin",
        &host,
    ];

    // A wrong password: the login fails with lank8s's reason and nothing is stored.
    let before = lank8s.request_lines().len();
    let wrong = skopeo(&login_args, &env, "not-the-password\n").await;
    let err = wrong.expect_err("a login with a wrong password must fail");
    // skopeo words a 401 from the token service its own way; lank8s's reason is logged.
    assert!(
        err.contains("invalid username/password"),
        "skopeo login's error: {err}"
    );
    let lines = lines_since(&lank8s, before).await;
    assert!(
        lines.iter().any(|l| field(l, "path") == "/token"
            && l["status"] == 401
            && field(l, "error") == "wrong user name or password"),
        "{lines:#?}"
    );
    let wrong = login(
        &client_from("127.0.0.1"),
        &lank8s.url(),
        &host,
        ("bob", "not-the-password"),
        REPO,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.describe());
    assert_eq!(
        wrong.error(),
        ("UNAUTHORIZED".into(), "wrong user name or password".into())
    );
    let stored = std::fs::read_to_string(&auth_file).unwrap_or_default();
    assert!(
        !stored.contains(&host),
        "auth file after a failed login: {stored}"
    );

    // The right password: "Login Succeeded!", and the auth file holds bob's login.
    let before = lank8s.request_lines().len();
    let ok = skopeo(&login_args, &env, &format!("{PASSWORD}\n")).await;
    let stdout = ok.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    assert!(stdout.contains("Login Succeeded!"), "{stdout}");
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&auth_file).expect("auth file"))
            .expect("auth file JSON");
    assert_eq!(
        stored["auths"][host.as_str()]["auth"],
        base64_encode(format!("bob:{PASSWORD}").as_bytes()),
        "{stored}"
    );
    let lines = lines_since(&lank8s, before).await;
    assert!(
        lines
            .iter()
            .any(|l| field(l, "path") == "/v2/" && l["status"] == 200 && l["account"] == "bob"),
        "the login's /v2/ check with the token: {lines:#?}"
    );
    // Logging in pulls nothing, so it grants nothing.
    assert_eq!(grants_list(lank8s.config_path()), vec!["no grants"]);

    // A copy with that auth file pulls, on bob's account.
    let before = lank8s.request_lines().len();
    let dest = dir.path().join("image");
    let dest_ref = format!("dir:{}", dest.display());
    let src = format!("docker://{host}/{REPO}:v1");
    let authfile = auth_file.display().to_string();
    let copy = [
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--retry-times=0",
        "--src-authfile",
        &authfile,
        &src,
        &dest_ref,
    ];
    let copied = skopeo(&copy, &[], "").await;
    copied.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    compare_dir_with_image(&dest, &image);
    let lines = lines_since(&lank8s, before).await;
    assert_pulled_as(&lines, "bob", "copy with --src-authfile");
    let grants = grants_list(lank8s.config_path());
    assert!(
        grants.len() == 1 && grants[0].starts_with("127.0.0.1/32  account=bob  "),
        "{grants:?}"
    );
}

/// `ctr images pull --plain-http [--user u:p] <ref>` for the host's platform.
async fn ctr_pull(
    containerd: &Containerd,
    reference: &str,
    user: Option<&str>,
) -> Result<String, String> {
    let hosts = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--plain-http"];
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    containerd.pull(reference, hosts.path(), &args).await
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no test image for {other}"),
    }
}

/// The image is listed with its digest, complete, unpacked, with its files.
async fn assert_unpacked(containerd: &Containerd, reference: &str, image: &RunnableImage) {
    assert_eq!(
        containerd.image_digest(reference).await.as_deref(),
        Some(image.top_digest()),
        "{}",
        containerd.images().await
    );
    containerd
        .check_unpacked(reference)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let platform = image.platform(host_arch());
    let hello = containerd
        .read_file(&platform.chain_id(), "/hello.txt")
        .await;
    let expected = support::runnable::hello_text(&image.label, host_arch());
    assert_eq!(hello.as_deref(), Ok(expected.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_with_user_and_then_from_the_granted_address() {
    let v1 = RunnableImage::oci_index("access/containerd-v1");
    let v2 = RunnableImage::docker_list("access/containerd-v2");
    let registry = Registry::start().await;
    v1.push(&registry, REPO, "v1").await;
    v2.push(&registry, REPO, "v2").await;
    let lank8s = Lank8s::start_with(&top_level(None), &tables(&registry.url(), "")).await;
    add_account(lank8s.config_path(), "carol", PASSWORD);
    let containerd = Containerd::start().await;
    let v1_ref = format!("{}/{REPO}:v1", lank8s.host());
    let v2_ref = format!("{}/{REPO}:v2", lank8s.host());

    // No --user on a fresh lank8s: refused with 401, nothing listed.
    let before = lank8s.request_lines().len();
    let refused = ctr_pull(&containerd, &v1_ref, None).await;
    let err = refused.expect_err("an anonymous pull of a sponsor route must fail");
    assert!(err.contains("401"), "ctr's error: {err}");
    let lines = lines_since(&lank8s, before).await;
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 401 && field(l, "path") == "/v2/team/app/manifests/v1"),
        "no 401 for the manifest logged: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| field(l, "account") == "-"),
        "{lines:#?}"
    );
    assert_eq!(containerd.image_digest(&v1_ref).await, None);

    // With --user: containerd logs in at /token, pulls and unpacks.
    let before = lank8s.request_lines().len();
    let user = format!("carol:{PASSWORD}");
    let pulled = ctr_pull(&containerd, &v1_ref, Some(&user)).await;
    pulled.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    assert_unpacked(&containerd, &v1_ref, &v1).await;
    let lines = lines_since(&lank8s, before).await;
    assert_pulled_as(&lines, "carol", "ctr pull --user");
    assert!(
        lines
            .iter()
            .any(|l| field(l, "path") == "/token" && l["status"] == 200),
        "containerd never logged in: {lines:#?}"
    );
    let blob_gets = lines
        .iter()
        .filter(|l| field(l, "path").contains("/blobs/"))
        .count();
    assert_eq!(
        blob_gets,
        v1.platform(host_arch()).blob_digests().len(),
        "{lines:#?}"
    );

    // Another tag without --user: the address is granted, so no 401 and no login.
    let before = lank8s.request_lines().len();
    let granted = ctr_pull(&containerd, &v2_ref, None).await;
    granted.unwrap_or_else(|e| panic!("{e}\nlank8s log:\n{}", lank8s.log()));
    assert_unpacked(&containerd, &v2_ref, &v2).await;
    let lines = lines_since(&lank8s, before).await;
    assert_pulled_as(&lines, "carol", "granted ctr pull");
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:#?}");
    assert!(
        lines.iter().all(|l| field(l, "path") != "/token"),
        "{lines:#?}"
    );
}
