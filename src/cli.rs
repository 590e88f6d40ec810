//! The command line: flags (each also an environment variable), subcommands,
//! and turning them into a validated [`ServerConfig`] once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::project;
use crate::server::{self, ServerConfig};

/// Switchboard: a command-response UI runtime for touch panels and operator screens.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
pub struct Args {
    /// Folder holding one sub-folder per project.
    #[arg(long, env = "SWITCHBOARD_PROJECTS", default_value = "projects")]
    pub projects: PathBuf,

    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "SWITCHBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// The database file keeping sessions and persisted variables across restarts.
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE",
        default_value = "data/switchboard.redb"
    )]
    pub database: PathBuf,

    /// The users file (TOML: id, name, argon2id password hash, roles).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_USERS",
        default_value = "users.toml"
    )]
    pub users: PathBuf,

    /// Extra origins (`https://panel.example.com`) allowed to open WebSockets
    /// and send commands, besides the server's own host. Comma-separated.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Host names clients use to reach the server (`panel.example.com`),
    /// comma-separated; requests naming another host get 421 (DNS
    /// rebinding). Default: bound to loopback, its own names (`localhost`,
    /// `127.0.0.1`, `::1`); bound elsewhere, any (with a warning). `*`: any.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Bearer token `GET /metrics` requires; without it the metrics are open.
    #[arg(long, env = "SWITCHBOARD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Anonymous sessions one client address may start per minute (a burst
    /// of as many, then refilled); past it, 429. 0: no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_NEW_SESSIONS_PER_MINUTE",
        default_value_t = 120
    )]
    pub new_sessions_per_minute: u32,

    /// Who may frame the pages (CSP frame-ancestors), e.g. `'self'` or
    /// `'self' https://portal.example.com`; `*` for any (app webviews that
    /// embed pages in a frame).
    #[arg(long, env = "SWITCHBOARD_FRAME_ANCESTORS", default_value = "'self'")]
    pub frame_ancestors: String,

    /// PEM certificate chain: serve HTTPS (and WSS) instead of HTTP.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds to wait for running requests when stopping.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value_t = 5)]
    pub shutdown_timeout: u64,

    /// Dev mode, for working on a project: errors and silent mistakes
    /// (compile errors, unknown answer keys, unhandled commands) appear in
    /// an overlay in every connected browser, with paths relative to the
    /// project. Off by default: outside dev mode no file path reaches a browser.
    #[arg(long, env = "SWITCHBOARD_DEV")]
    pub dev: bool,

    /// Cluster mode: share sessions and `!` variables with the other nodes
    /// through this NATS server's JetStream (`nats://host:4222`) instead of
    /// the database file. See docs/cluster.md.
    #[arg(long, env = "SWITCHBOARD_CLUSTER")]
    pub cluster: Option<String>,

    /// This node's name in `/healthz` and on its NATS connection (default:
    /// the host name and the process id).
    #[arg(long, env = "SWITCHBOARD_NODE")]
    pub node: Option<String>,

    /// Cluster mode: the lease time in milliseconds. Timers, `pointChange`,
    /// `projectStartup` and idle expiry run on the node holding a project's
    /// lease; when it dies another takes over within this time.
    #[arg(long, env = "SWITCHBOARD_LEASE_MS", default_value_t = 6000)]
    pub lease_ms: u64,
    /// Cluster mode: how many copies NATS keeps of each shared bucket when
    /// a node creates it (3 on a NATS cluster of three or more servers, so
    /// that losing one server loses nothing).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,

    #[command(subcommand)]
    pub command: Option<Subcommands>,
}

#[derive(Debug, Subcommand)]
pub enum Subcommands {
    /// Compile a project (templates and scripts) and print its errors, or `ok`.
    Check {
        /// The project's folder (the one holding `project.toml`).
        dir: PathBuf,
    },
    /// Create a new project folder (a page, a handler, a lib/ module,
    /// translations) that passes `check` and runs as it is.
    New {
        /// The new project's folder, e.g. `projects/lobby` (its name is
        /// the project's name).
        dir: PathBuf,
    },
    /// Set a user's password in the users file (prompted, never echoed),
    /// adding the user if new.
    Passwd {
        /// The user id.
        user: String,
        /// Display name (new users; default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Roles, comma-separated (replaces the user's roles).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
    },
}

/// Runs the program; what `main` returns.
pub fn run() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Subcommands::Check { ref dir }) => check(dir),
        Some(Subcommands::New { ref dir }) => new_project(dir),
        Some(Subcommands::Passwd {
            ref user,
            ref name,
            ref roles,
        }) => passwd(&args.users, user, name.as_deref(), roles.clone()),
        None => serve(args),
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    // The host functions are registered (bound to no server) so that a call
    // to one is known, and a call to anything else is an error.
    match project::Project::load_with(dir, &crate::runtime::register_host_functions_unbound) {
        Ok(project) => {
            for warning in &project.warnings {
                eprintln!("warning: {warning}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn new_project(dir: &std::path::Path) -> ExitCode {
    match crate::scaffold::create(dir) {
        Ok(files) => {
            for file in files {
                println!("created {}", file.display());
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| ".".into(), |p| p.display().to_string());
            println!(
                "\nNext: switchboard check {}\n      switchboard --projects {parent} --dev\n      then open http://127.0.0.1:8080/{name}/ (docs/tutorial.md walks you through it)",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchboard new: {error}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(
    users: &std::path::Path,
    user: &str,
    name: Option<&str>,
    roles: Option<Vec<String>>,
) -> ExitCode {
    let password = match read_new_password(user) {
        Ok(password) => password,
        Err(message) => {
            eprintln!("switchboard passwd: {message}");
            return ExitCode::FAILURE;
        }
    };
    match crate::auth::set_password(users, user, &password, name, roles) {
        Ok(()) => {
            println!("password of {user} set in {}", users.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchboard passwd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prompts twice without echo. Without a terminal (scripts, tests) the
/// password is read from the first line of standard input instead.
fn read_new_password(user: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {user}: "))
            .map_err(|e| e.to_string())?;
        let second = rpassword::prompt_password("Repeat it: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.len() < 8 {
        return Err("use at least 8 characters".into());
    }
    Ok(password)
}

fn serve(args: Args) -> ExitCode {
    // Held until the server has stopped: dropping it writes the last lines.
    let _log_writer = init_logging();
    let config = ServerConfig {
        projects_dir: args.projects,
        bind: args.bind,
        database: args.database,
        users: args.users,
        allowed_origins: args.allowed_origins,
        allowed_hosts: args.allowed_hosts,
        metrics_token: args.metrics_token.filter(|token| !token.is_empty()),
        new_sessions_per_minute: args.new_sessions_per_minute,
        frame_ancestors: args.frame_ancestors,
        tls: args.tls_cert.zip(args.tls_key),
        shutdown_timeout_secs: args.shutdown_timeout,
        dev: args.dev,
        cluster: args.cluster.filter(|url| !url.is_empty()),
        node: args
            .node
            .filter(|node| !node.is_empty())
            .unwrap_or_else(default_node_name),
        lease: std::time::Duration::from_millis(args.lease_ms),
        cluster_replicas: usize::from(args.cluster_replicas),
    };
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `host-pid`: unique among the nodes of one machine, readable in logs.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "switchboard".into());
    format!("{host}-{}", std::process::id())
}

/// Log lines go to stderr in batches, written by a background thread
/// ([`crate::logwriter`]).
fn init_logging() -> crate::logwriter::FlushGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"));
    let (writer, guard) = crate::logwriter::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}
