//! The command line: `lank8s serve`, `hosts`, `config check`, and the
//! `account` and `grants` administration commands.

mod admin;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "lank8s",
    version,
    about = "A pull-through mirror for container registries"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror. With no configuration it listens on 0.0.0.0:5000,
    /// caches in ./lank8s-data and mirrors the default upstreams.
    Serve(ServeArgs),
    /// Print (or write) the configuration each client needs to pull
    /// through this mirror: containerd, CRI-O/Podman, Docker, k3s, kubeadm, kind.
    Hosts(HostsArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage sponsor accounts in the state store (works while servers run).
    Account {
        #[command(flatten)]
        state: admin::StateArgs,
        #[command(subcommand)]
        command: admin::AccountCommand,
    },
    /// List or revoke the IP grants sponsors' pulls earned.
    Grants {
        #[command(flatten)]
        state: admin::StateArgs,
        #[command(subcommand)]
        command: admin::GrantsCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; every key is listed in the README's
    /// configuration reference and checked by `lank8s config check`.
    /// LANK8S_LOG overrides `log.level`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Cache directory; overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format, `text` or `json`; overrides `log.format`.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(clap::Args)]
struct HostsArgs {
    /// The address clients reach lank8s at, e.g. https://mirror.example.com.
    #[arg(long)]
    mirror: String,
    /// The lank8s configuration whose upstreams to cover (default: built-in).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Write the files under this directory instead of printing them.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a file and print the effective routes. Exits 2 if invalid.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
}

/// Threads for file I/O; reads of cached blobs take microseconds each.
const BLOCKING_THREADS: usize = 16;

/// Exit status for a configuration that cannot be used.
const EXIT_BAD_CONFIG: u8 = 2;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Hosts(args) => hosts(args),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Account { state, command } => admin::account(state, command),
        Command::Grants { state, command } => admin::grants_command(state, command),
    }
}

/// The configuration at `path`, or the embedded one; a bad file is
/// reported and ends the command with EXIT_BAD_CONFIG.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let config = match path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded()),
    };
    config.map_err(|err| {
        eprintln!("lank8s: invalid configuration: {err}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn hosts(args: HostsArgs) -> ExitCode {
    let config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mirror = match crate::hosts::MirrorAddress::parse(&args.mirror) {
        Ok(mirror) => mirror,
        Err(err) => {
            eprintln!("lank8s: --mirror: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let files = crate::hosts::generate(&config, &mirror);

    let Some(out) = args.out else {
        for file in &files {
            println!("# ==> {} <==\n{}", file.path.display(), file.contents);
        }
        return ExitCode::SUCCESS;
    };
    for file in &files {
        let path = out.join(&file.path);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, &file.contents))
            .and_then(|_| {
                // Scripts are meant to be run as they are.
                use std::os::unix::fs::PermissionsExt as _;
                match path.extension().is_some_and(|e| e == "sh") {
                    true => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)),
                    false => Ok(()),
                }
            });
        if let Err(err) = written {
            eprintln!("lank8s: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("wrote {} files under {}", files.len(), out.display());
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(format) = args.log_format {
        config.log.format = if format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    init_logging(&config);

    // Disk reads and fill writes run on blocking threads. Each thread gets
    // its own allocator arena that keeps freed buffers, so a small pool
    // keeps memory flat under many concurrent downloads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lank8s: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::http::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "lank8s stopped");
            eprintln!("lank8s: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANK8S_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: invalid: {err}", file.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    print!("{}", describe(&config));

    // Operators publish these for firewalls: with redirects on, clients
    // fetch blobs from there, not from lank8s.
    let redirects = config.dispatch.mode == crate::config::DeliveryMode::Redirect
        || !config.dispatch.regions.is_empty();
    if redirects {
        let hosts = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(crate::cache::store::redirect_hosts(&config.storage))
                    .map_err(|e| e.to_string())
            });
        match hosts {
            Ok(mut hosts) => {
                for target in &config.dispatch.targets {
                    let example = target.url.replace("{key}", "k").replace("{digest}", "d");
                    let host = url::Url::parse(&example)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_owned));
                    hosts.extend(host);
                }
                hosts.dedup();
                println!(
                    "redirect hosts (clients fetch blobs from): {}",
                    hosts.join(", ")
                );
            }
            Err(err) => {
                eprintln!("{}: invalid: storage: {err}", file.display());
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Where the state store of a configuration is, in words; a Redis URL may
/// hold a password, so it is not shown.
fn describe_state(config: &Config) -> String {
    match config.state.redis_url() {
        Some(_) => "redis (shared by replicas)".into(),
        None => format!(
            "embedded ({})",
            crate::state::embedded_path(&config.data_dir).display()
        ),
    }
}

/// The effective routes of a configuration, as `config check` prints them.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "listen: {}", config.listen);
    let _ = writeln!(out, "data_dir: {}", config.data_dir.display());
    let _ = writeln!(
        out,
        "default upstream (bare names): {}",
        config.default_upstream
    );
    let _ = writeln!(
        out,
        "upstreams (matched by ?ns= or a first path component):"
    );
    for upstream in config.upstreams.values() {
        let mut names = vec![upstream.name.clone()];
        names.extend(upstream.names.iter().cloned());
        let _ = writeln!(
            out,
            "  {:<28} -> {}  tier={}  tag_ttl={}{}{}",
            names.join(", "),
            upstream.url,
            upstream.policy.tier.as_str(),
            humantime::format_duration(upstream.tag_ttl),
            if upstream.library_prefix {
                "  library/ for one-part names"
            } else {
                ""
            },
            if upstream.credentials.is_some() {
                "  with credentials"
            } else {
                ""
            },
        );
    }
    let storage = match &config.storage {
        crate::config::StorageConfig::Fs => format!("fs ({})", config.data_dir.display()),
        crate::config::StorageConfig::S3(c) => format!("s3 bucket {}", c.bucket),
        crate::config::StorageConfig::Oss(c) => format!("oss bucket {}", c.bucket),
        crate::config::StorageConfig::Gcs(c) => format!("gcs bucket {}", c.bucket),
    };
    let _ = writeln!(
        out,
        "storage: {storage}; blobs leave by {:?}",
        config.dispatch.mode
    );
    let _ = writeln!(out, "state: {}", describe_state(config));
    match &config.domain {
        Some(domain) => {
            let _ = writeln!(out, "hosts (domain {domain}):");
            for (sub, upstream) in &config.hosts {
                let host = if sub == "@" {
                    domain.clone()
                } else {
                    format!("{sub}.{domain}")
                };
                let _ = writeln!(out, "  {host:<40} -> {upstream}");
            }
        }
        None => {
            let _ = writeln!(out, "hosts: none (set `domain` to route by Host header)");
        }
    }
    out
}
