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

    /// Seconds to wait for running requests when stopping.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value_t = 5)]
    pub shutdown_timeout: u64,

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
}

/// Runs the program; what `main` returns.
pub fn run() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Subcommands::Check { ref dir }) => check(dir),
        None => serve(args),
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    match project::Project::load(dir) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Args) -> ExitCode {
    init_logging();
    let config = ServerConfig {
        projects_dir: args.projects,
        bind: args.bind,
        database: args.database,
        shutdown_timeout_secs: args.shutdown_timeout,
    };
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
