//! `lank8s account …` and `lank8s grants …`: sponsor accounts and the IP
//! grants they earned, edited in the state store the servers read (the
//! embedded file in `data_dir`, or Redis), while the servers run.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use clap::Subcommand;

use super::{EXIT_BAD_CONFIG, describe_state, load_config};
use crate::access::accounts::{Account, AccountError, Accounts, generate_password};
use crate::access::grants::Grants;
use crate::access::{date, now};
use crate::config::{Config, TIER_ANONYMOUS, TIER_GRANTED, TIER_SPONSOR};
use crate::state::State;

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create a sponsor account. Without --password-stdin a password is
    /// generated and printed once.
    Add {
        name: String,
        /// The limit tier its pulls are held to (a tier under
        /// [access.limits]).
        #[arg(long, default_value = TIER_SPONSOR)]
        tier: String,
        #[command(flatten)]
        expiry: Expiry,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List every account: name, tier, expiry, status.
    List,
    /// Show one account.
    Show { name: String },
    /// Set an account's expiry (and so the limit of its grants).
    Extend {
        name: String,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// Stop an account: it no longer logs in and its grants are revoked.
    Disable { name: String },
    /// Let a disabled account log in again.
    Enable { name: String },
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// List live grants: network, account, expiry.
    List,
    /// Revoke the grant covering an address or network, or every grant of
    /// an account.
    Revoke {
        /// An address (its grant network is revoked) or a network.
        address: Option<String>,
        #[arg(long, conflicts_with = "address")]
        account: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct Expiry {
    /// The last day the account is valid (UTC), as YYYY-MM-DD.
    #[arg(long, conflicts_with = "days")]
    until: Option<String>,
    /// Days from now (or, for extend, from the current expiry if later).
    #[arg(long)]
    days: Option<u64>,
}

#[derive(clap::Args)]
pub struct StateArgs {
    /// The server's configuration: where its state store is.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The server's data directory; overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

/// The longest an account may be valid: a century.
const MAX_VALIDITY_DAYS: u64 = 36_525;

/// Why a command failed: the message, and the exit status.
struct Failure(String, u8);

impl From<AccountError> for Failure {
    fn from(err: AccountError) -> Failure {
        Failure(err.to_string(), 1)
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(err: crate::state::StateError) -> Failure {
        Failure(err.to_string(), 1)
    }
}

pub fn account(args: StateArgs, command: AccountCommand) -> ExitCode {
    run(args, |config, state| async move {
        let accounts = Accounts::new(state.clone());
        match command {
            AccountCommand::Add {
                name,
                tier,
                expiry,
                password_stdin,
            } => {
                let unusable = [TIER_ANONYMOUS, TIER_GRANTED].contains(&tier.as_str())
                    || !config.access.limits.contains_key(&tier);
                if unusable {
                    let tiers: Vec<&str> = config
                        .access
                        .limits
                        .keys()
                        .map(String::as_str)
                        .filter(|t| ![TIER_ANONYMOUS, TIER_GRANTED].contains(t))
                        .collect();
                    return Err(Failure(
                        format!(
                            "--tier: {tier:?} is not an account tier; configured: {}",
                            tiers.join(", ")
                        ),
                        EXIT_BAD_CONFIG,
                    ));
                }
                let expires_at = expiry.resolve(now(), 365)?;
                let (password, generated) = match password_stdin {
                    true => (read_password()?, false),
                    false => (generate_password(), true),
                };
                let account = accounts.add(&name, &password, &tier, expires_at).await?;
                println!("{}", describe(&account));
                if generated {
                    println!("password: {password}");
                }
                Ok(())
            }
            AccountCommand::List => {
                let list = accounts.list().await?;
                if list.is_empty() {
                    println!("no accounts");
                }
                for account in list {
                    println!("{}", describe(&account));
                }
                Ok(())
            }
            AccountCommand::Show { name } => {
                println!("{}", describe(&accounts.get(&name).await?));
                Ok(())
            }
            AccountCommand::Extend { name, expiry } => {
                let mut account = accounts.get(&name).await?;
                account.expires_at = expiry.resolve(account.expires_at.max(now()), 0)?;
                accounts.save(&account).await?;
                println!("{}", describe(&account));
                Ok(())
            }
            AccountCommand::Disable { name } => {
                let mut account = accounts.get(&name).await?;
                account.disabled = true;
                accounts.save(&account).await?;
                let revoked = Grants::new(state, &config.access)
                    .revoke_account(&name)
                    .await?;
                println!("{}", describe(&account));
                println!("revoked {revoked} grants");
                Ok(())
            }
            AccountCommand::Enable { name } => {
                let mut account = accounts.get(&name).await?;
                account.disabled = false;
                accounts.save(&account).await?;
                println!("{}", describe(&account));
                Ok(())
            }
        }
    })
}

pub fn grants_command(args: StateArgs, command: GrantsCommand) -> ExitCode {
    run(args, |config, state| async move {
        let grants = Grants::new(state, &config.access);
        match command {
            GrantsCommand::List => {
                let list = grants.list().await?;
                if list.is_empty() {
                    println!("no grants");
                }
                for grant in list {
                    println!(
                        "{}  account={}  expires={}",
                        grant.network,
                        grant.account,
                        date(grant.expires_at)
                    );
                }
                Ok(())
            }
            GrantsCommand::Revoke {
                account: Some(account),
                ..
            } => {
                let revoked = grants.revoke_account(&account).await?;
                println!("revoked {revoked} grants of {account}");
                Ok(())
            }
            GrantsCommand::Revoke {
                address: Some(address),
                ..
            } => {
                let network = match address.parse::<ipnet::IpNet>() {
                    // A network inside a grant's stands for that grant.
                    Ok(network)
                        if network.prefix_len()
                            >= grants.network_of(network.addr()).prefix_len() =>
                    {
                        grants.network_of(network.addr())
                    }
                    Ok(network) => network.trunc(),
                    Err(_) => match address.parse::<std::net::IpAddr>() {
                        Ok(address) => grants.network_of(address),
                        Err(_) => {
                            return Err(Failure(
                                format!("{address:?} is not an address or network"),
                                EXIT_BAD_CONFIG,
                            ));
                        }
                    },
                };
                match grants.revoke(network).await? {
                    true => println!("revoked the grant of {network}"),
                    false => return Err(Failure(format!("no grant covers {network}"), 1)),
                }
                Ok(())
            }
            GrantsCommand::Revoke { .. } => Err(Failure(
                "name an address, a network or --account".into(),
                EXIT_BAD_CONFIG,
            )),
        }
    })
}

/// Loads the configuration, opens its state store and runs `command`.
fn run<F, Fut>(args: StateArgs, command: F) -> ExitCode
where
    F: FnOnce(Config, State) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let mut config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lank8s: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        // Said on stderr, so that a forgotten --config does not go unnoticed.
        eprintln!("lank8s: state store: {}", describe_state(&config));
        let state = State::open(config.state.redis_url(), &config.data_dir).await?;
        command(config, state).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("lank8s: {message}");
            ExitCode::from(code)
        }
    }
}

impl Expiry {
    /// The expiry as seconds since the epoch: the end of `--until`'s day, or
    /// `--days` after `from`; `default_days` when neither is given (0: one
    /// of them is required).
    fn resolve(&self, from: u64, default_days: u64) -> Result<u64, Failure> {
        let expires_at = self.resolve_unchecked(from, default_days)?;
        if expires_at > now().saturating_add(MAX_VALIDITY_DAYS * 86_400) {
            return Err(Failure(
                format!("an account may be valid for at most {MAX_VALIDITY_DAYS} days from now"),
                EXIT_BAD_CONFIG,
            ));
        }
        Ok(expires_at)
    }

    fn resolve_unchecked(&self, from: u64, default_days: u64) -> Result<u64, Failure> {
        match (&self.until, self.days) {
            (Some(day), _) => {
                let start =
                    humantime::parse_rfc3339(&format!("{day}T00:00:00Z")).map_err(|_| {
                        Failure(
                            format!("--until: {day:?} is not a date such as 2027-06-30"),
                            EXIT_BAD_CONFIG,
                        )
                    })?;
                let start = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                Ok(start + 86_400)
            }
            (None, Some(days)) => Ok(from.saturating_add(days.saturating_mul(86_400))),
            (None, None) if default_days > 0 => Ok(from.saturating_add(default_days * 86_400)),
            (None, None) => Err(Failure(
                "give --until YYYY-MM-DD or --days N".into(),
                EXIT_BAD_CONFIG,
            )),
        }
    }
}

fn read_password() -> Result<String, Failure> {
    let mut input = String::new();
    std::io::stdin()
        .take(8192)
        .read_to_string(&mut input)
        .map_err(|e| Failure(format!("cannot read the password: {e}"), 1))?;
    let password = input.lines().next().unwrap_or_default().to_owned();
    if password.len() >= 4096 {
        return Err(Failure(
            "the password is too long: at most 4095 bytes".into(),
            EXIT_BAD_CONFIG,
        ));
    }
    Ok(password)
}

fn describe(account: &Account) -> String {
    format!(
        "{}  tier={}  expires={}  status={}",
        account.name,
        account.tier,
        date(account.expires_at),
        account.status(now())
    )
}
