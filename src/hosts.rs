//! Client configuration for pointing every runtime at a lank8s address:
//! the files `lank8s hosts` prints or writes, for every configured upstream.

use std::path::{Path, PathBuf};

use url::Url;

use crate::config::Config;

/// The pause image kubeadm's own defaults use, for sandbox settings.
const PAUSE_IMAGE: &str = "pause:3.10";

/// One generated file: where it goes under the output directory, and what
/// it says.
pub struct ClientFile {
    pub path: PathBuf,
    pub contents: String,
}

/// A mirror address as clients write it, checked once.
pub struct MirrorAddress {
    url: Url,
}

impl MirrorAddress {
    pub fn parse(text: &str) -> Result<MirrorAddress, String> {
        let url = Url::parse(text).map_err(|_| {
            format!("{text:?} is not a URL; write it as http://host:port or https://host")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{text:?} must be an http:// or https:// URL with a host"
            ));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!("{text:?} must be just scheme, host and port"));
        }
        Ok(MirrorAddress { url })
    }

    /// `scheme://host[:port]`, no trailing slash.
    fn base(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_owned()
    }

    /// `host[:port]`, as image references and registries.conf write it.
    fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    fn insecure(&self) -> bool {
        self.url.scheme() == "http"
    }
}

/// The registry a client would contact without the mirror.
fn upstream_server(name: &str) -> String {
    match name {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

/// Every file, in a stable order.
pub fn generate(config: &Config, mirror: &MirrorAddress) -> Vec<ClientFile> {
    let names: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
    let mut files = Vec::new();

    for name in &names {
        files.push(ClientFile {
            path: Path::new("containerd/certs.d")
                .join(name)
                .join("hosts.toml"),
            contents: containerd_ns(name, mirror),
        });
    }
    // Images renamed to the mirror (kubeadm's --image-repository, sandbox
    // images) are pulled from the mirror's own name, which a plain-HTTP
    // mirror must be declared for too.
    if mirror.insecure() {
        files.push(ClientFile {
            path: Path::new("containerd/certs.d").join(mirror.authority()).join("hosts.toml"),
            contents: format!(
                "server = \"{base}\"\n\n[host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                base = mirror.base()
            ),
        });
    }
    for name in &names {
        files.push(ClientFile {
            path: Path::new("containerd-prefix/certs.d")
                .join(name)
                .join("hosts.toml"),
            contents: containerd_prefix(name, mirror),
        });
    }
    files.push(ClientFile {
        path: "containers/registries.conf.d/50-lank8s.conf".into(),
        contents: registries_conf(&names, mirror),
    });
    files.push(ClientFile {
        path: "docker/daemon.json".into(),
        contents: docker_daemon_json(config, mirror),
    });
    files.push(ClientFile {
        path: "k3s/registries.yaml".into(),
        contents: k3s_registries(&names, mirror),
    });
    files.push(ClientFile {
        path: "kubeadm.md".into(),
        contents: kubeadm(config, mirror),
    });
    files.push(ClientFile {
        path: "kind/cluster.yaml".into(),
        contents: kind_cluster(),
    });
    files.push(ClientFile {
        path: "kind/install-hosts.sh".into(),
        contents: kind_install(&names, mirror),
    });
    files
}

fn containerd_ns(name: &str, mirror: &MirrorAddress) -> String {
    format!(
        "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        upstream_server(name),
        mirror.base()
    )
}

fn containerd_prefix(name: &str, mirror: &MirrorAddress) -> String {
    format!(
        "server = \"{}\"\n\n[host.\"{}/v2/{name}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
        upstream_server(name),
        mirror.base()
    )
}

fn registries_conf(names: &[&str], mirror: &MirrorAddress) -> String {
    let mut out =
        String::from("# CRI-O, Podman, Buildah and skopeo: each registry is mirrored by lank8s.\n");
    for name in names {
        out.push_str(&format!(
            "\n[[registry]]\nprefix = \"{name}\"\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{}/{name}\"\n",
            mirror.authority()
        ));
        if mirror.insecure() {
            out.push_str("insecure = true\n");
        }
    }
    if mirror.insecure() {
        out.push_str(&format!(
            "\n# Images named after the mirror itself (kubeadm --image-repository, pause).\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            mirror.authority()
        ));
    }
    out
}

/// The classic Docker daemon mirrors only Docker Hub and sends no `ns`, so
/// its mirror must lead to docker.io by itself: a Host-routed name when a
/// `domain` maps one to docker.io, else the `/docker.io` path prefix
/// (Docker 25 and later).
fn docker_daemon_json(config: &Config, mirror: &MirrorAddress) -> String {
    let hub_host = config.domain.as_ref().and_then(|domain| {
        let (sub, _) = config
            .hosts
            .iter()
            .find(|(_, upstream)| *upstream == "docker.io")?;
        Some(match sub.as_str() {
            "@" => domain.clone(),
            sub => format!("{sub}.{domain}"),
        })
    });
    let hub_mirror = match hub_host {
        Some(host) => match mirror.url.port() {
            Some(port) => format!("{}://{host}:{port}", mirror.url.scheme()),
            None => format!("{}://{host}", mirror.url.scheme()),
        },
        None => format!("{}/docker.io", mirror.base()),
    };
    let mut daemon = serde_json::json!({ "registry-mirrors": [hub_mirror] });
    if mirror.insecure() {
        daemon["insecure-registries"] = serde_json::json!([mirror.authority()]);
    }
    let mut out = serde_json::to_string_pretty(&daemon).unwrap_or_default();
    out.push('\n');
    out
}

fn k3s_registries(names: &[&str], mirror: &MirrorAddress) -> String {
    let mut out = String::from(
        "# /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)\nmirrors:\n",
    );
    for name in names {
        out.push_str(&format!(
            "  {name}:\n    endpoint:\n      - \"{}\"\n",
            mirror.base()
        ));
    }
    out
}

fn kubeadm(config: &Config, mirror: &MirrorAddress) -> String {
    let repository = mirror.authority();
    format!(
        "# kubeadm with images renamed to the mirror (bare names go to {default})\n\n\
kubeadm init --image-repository={repository}\n\n\
# The runtime's sandbox image must come from the mirror too.\n\
# containerd 2.x, /etc/containerd/config.toml:\n\
[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{repository}/{PAUSE_IMAGE}\"\n\n\
# containerd 1.x, /etc/containerd/config.toml:\n\
[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{repository}/{PAUSE_IMAGE}\"\n\n\
# CRI-O, /etc/crio/crio.conf.d/10-lank8s.conf:\n\
[crio.image]\npause_image = \"{repository}/{PAUSE_IMAGE}\"\n\n\
# Or keep kubeadm's defaults and mirror at the runtime: install\n\
# containerd/certs.d/ from this output into /etc/containerd/certs.d/.\n",
        default = config.default_upstream,
    )
}

fn kind_cluster() -> String {
    "# kind create cluster --config cluster.yaml, then run install-hosts.sh\n\
kind: Cluster\n\
apiVersion: kind.x-k8s.io/v1alpha4\n\
containerdConfigPatches:\n\
- |-\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n"
        .to_owned()
}

fn kind_install(names: &[&str], mirror: &MirrorAddress) -> String {
    let mut out = String::from(
        "#!/bin/sh\n# Installs lank8s hosts.toml files on every kind node.\nset -eu\nfor node in $(kind get nodes); do\n",
    );
    for name in names {
        let file = containerd_ns(name, mirror).replace('\'', "'\\''");
        out.push_str(&format!(
            "  docker exec \"$node\" mkdir -p /etc/containerd/certs.d/{name}\n  printf '%s' '{file}' | docker exec -i \"$node\" cp /dev/stdin /etc/containerd/certs.d/{name}/hosts.toml\n"
        ));
    }
    out.push_str("done\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(mirror: &str) -> Vec<ClientFile> {
        generate(&Config::embedded(), &MirrorAddress::parse(mirror).unwrap())
    }

    fn find<'a>(files: &'a [ClientFile], path: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap()
            .contents
    }

    #[test]
    fn containerd_files_for_every_upstream() {
        let files = files("https://mirror.example.com");
        assert_eq!(
            find(&files, "containerd/certs.d/docker.io/hosts.toml"),
            "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.example.com\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        let prefix = find(&files, "containerd-prefix/certs.d/gcr.io/hosts.toml");
        assert!(prefix.contains("[host.\"https://mirror.example.com/v2/gcr.io\"]"));
        assert!(prefix.contains("override_path = true"));
        for name in [
            "registry.k8s.io",
            "k8s.gcr.io",
            "gcr.io",
            "quay.io",
            "ghcr.io",
            "us-central1-docker.pkg.dev",
        ] {
            assert!(files.iter().any(|f| {
                f.path
                    == Path::new("containerd/certs.d")
                        .join(name)
                        .join("hosts.toml")
            }));
        }
    }

    #[test]
    fn plain_http_mirrors_are_marked_insecure() {
        let files = files("http://127.0.0.1:5000");
        let conf = find(&files, "containers/registries.conf.d/50-lank8s.conf");
        assert!(conf.contains("location = \"127.0.0.1:5000/registry.k8s.io\"\ninsecure = true"));
        assert!(conf.contains("[[registry]]\nlocation = \"127.0.0.1:5000\"\ninsecure = true\n"));
        assert_eq!(
            find(&files, "containerd/certs.d/127.0.0.1:5000/hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        let daemon: serde_json::Value =
            serde_json::from_str(find(&files, "docker/daemon.json")).unwrap();
        assert_eq!(daemon["insecure-registries"][0], "127.0.0.1:5000");
        assert_eq!(
            daemon["registry-mirrors"][0],
            "http://127.0.0.1:5000/docker.io"
        );
        assert!(
            find(&files, "kubeadm.md").contains("kubeadm init --image-repository=127.0.0.1:5000\n")
        );
        assert!(
            !find(
                &files_for_https(),
                "containers/registries.conf.d/50-lank8s.conf"
            )
            .contains("insecure")
        );
    }

    fn files_for_https() -> Vec<ClientFile> {
        files("https://mirror.example.com")
    }

    #[test]
    fn the_client_guide_shows_what_is_generated() {
        let guide = include_str!("../docs/clients.md");
        let files = files("https://mirror.example.com");
        for path in [
            "containerd/certs.d/registry.k8s.io/hosts.toml",
            "containerd/certs.d/docker.io/hosts.toml",
            "containerd-prefix/certs.d/registry.k8s.io/hosts.toml",
            "containers/registries.conf.d/50-lank8s.conf",
            "docker/daemon.json",
            "k3s/registries.yaml",
            "kubeadm.md",
            "kind/cluster.yaml",
        ] {
            assert!(
                guide.contains(find(&files, path)),
                "docs/clients.md is out of date for {path}"
            );
        }
    }

    #[test]
    fn docker_uses_the_hub_host_when_a_domain_routes_one() {
        let config = Config::parse("domain = \"lank8s.example\"").unwrap();
        let mirror = MirrorAddress::parse("https://lank8s.example").unwrap();
        let files = generate(&config, &mirror);
        let daemon: serde_json::Value =
            serde_json::from_str(find(&files, "docker/daemon.json")).unwrap();
        assert_eq!(
            daemon["registry-mirrors"][0],
            "https://docker.lank8s.example"
        );
    }

    #[test]
    fn mirror_address_must_be_bare() {
        assert!(MirrorAddress::parse("mirror.example.com").is_err());
        assert!(MirrorAddress::parse("https://m.example.com/v2").is_err());
        assert!(MirrorAddress::parse("ftp://m.example.com").is_err());
    }
}
