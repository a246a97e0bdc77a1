//! Runs `skopeo copy --all` into a `dir:` layout and checks the result byte for byte against a pushed TestImage.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::images::TestImage;

const COPY_TIMEOUT: Duration = Duration::from_secs(120);

/// `skopeo copy --all --preserve-digests <src> dir:<dest_dir>`, anonymously.
/// `src` is a full skopeo reference such as `docker://127.0.0.1:5000/repo:tag`.
pub async fn skopeo_copy_all(src: &str, dest_dir: &Path) -> Result<(), String> {
    skopeo_copy_all_with_creds(src, dest_dir, None).await
}

/// As [`skopeo_copy_all`], sending `user:pass` to the source registry's token service.
pub async fn skopeo_copy_all_with_creds(
    src: &str,
    dest_dir: &Path,
    creds: Option<(&str, &str)>,
) -> Result<(), String> {
    // An empty HOME and XDG_RUNTIME_DIR keep the user's auth.json, registries.conf and
    // policy.json out of the picture; --insecure-policy makes no policy file necessary.
    let home = tempfile::Builder::new()
        .prefix("lank8s-skopeo-home-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .arg("copy")
        .arg("--all")
        .arg("--preserve-digests")
        .arg("--src-tls-verify=false")
        .arg("--retry-times=0");
    if let Some((user, pass)) = creds {
        cmd.arg(format!("--src-creds={user}:{pass}"));
    }
    cmd.arg(src)
        .arg(format!("dir:{}", dest_dir.display()))
        .env("HOME", home.path())
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
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd.spawn().map_err(|e| format!("spawn skopeo: {e}"))?;
    let output = match tokio::time::timeout(COPY_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for skopeo: {e}")),
        // Dropping the future drops the child, and kill_on_drop ends it.
        Err(_) => {
            return Err(format!(
                "skopeo copy {src} timed out after {COPY_TIMEOUT:?}"
            ));
        }
    };
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo copy {src} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Panics with a description of every difference between the `dir:` copy and `image`.
pub fn compare_dir_with_image(dest_dir: &Path, image: &TestImage) {
    if let Err(e) = check_dir_against_image(dest_dir, image) {
        panic!(
            "{} does not match image {}:\n{e}",
            dest_dir.display(),
            image.top_digest()
        );
    }
}

/// skopeo 1.9's `dir:` layout: `manifest.json` holds the top-level manifest,
/// `<hex>.manifest.json` each per-platform manifest of a list, `<hex>` each blob,
/// and `version` the layout version. Anything else is reported as unexpected.
pub fn check_dir_against_image(dest_dir: &Path, image: &TestImage) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut expected_files = BTreeSet::from(["version".to_string()]);
    let mut expect = |file: String, what: &str, want: &[u8]| {
        match std::fs::read(dest_dir.join(&file)) {
            Ok(got) if got == want => {}
            Ok(got) => problems.push(format!(
                "{file} ({what}): {} bytes with digest {}, expected {} bytes with digest {}",
                got.len(),
                super::digest_of(&got),
                want.len(),
                super::digest_of(want)
            )),
            Err(e) => problems.push(format!("{file} ({what}): missing: {e}")),
        }
        expected_files.insert(file);
    };
    let (top_digest, top_type, top_bytes) = &image.manifests[0];
    expect(
        "manifest.json".into(),
        &format!("top-level {top_type} {top_digest}"),
        top_bytes,
    );
    for (digest, media_type, bytes) in &image.manifests[1..] {
        expect(
            format!("{}.manifest.json", hex_of(digest)),
            &format!("{media_type} {digest}"),
            bytes,
        );
    }
    for (digest, bytes) in &image.blobs {
        expect(hex_of(digest).to_string(), &format!("blob {digest}"), bytes);
    }
    let present: BTreeSet<String> = std::fs::read_dir(dest_dir)
        .map_err(|e| format!("read {}: {e}", dest_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for extra in present.difference(&expected_files) {
        problems.push(format!("unexpected file {extra}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
