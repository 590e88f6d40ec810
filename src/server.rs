//! Starting and stopping the HTTP server: load the projects, bind, print
//! where to go, and on SIGTERM/Ctrl-C close every WebSocket and stop within
//! the shutdown timeout instead of waiting for clients to leave.
//!
//! The server is actix-http's (what actix-web's `HttpServer` builds) with an
//! upgrade service: WebSocket handshakes are taken off the HTTP/1 dispatcher
//! and served by [`transport::Upgrades`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::{App, web};
use tracing::{info, warn};

use crate::reload;
use crate::runtime::{self, Runtime};
use crate::transport;

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub projects_dir: PathBuf,
    pub bind: SocketAddr,
    /// The database file (sessions, persisted variables).
    pub database: PathBuf,
    pub users: PathBuf,
    /// Origins allowed besides the server's own host.
    pub allowed_origins: Vec<String>,
    /// `--allowed-hosts` as given (empty: the default for the bind address).
    pub allowed_hosts: Vec<String>,
    /// The bearer token `/metrics` requires.
    pub metrics_token: Option<String>,
    /// Anonymous sessions per client address and minute (0: no limit).
    pub new_sessions_per_minute: u32,
    /// CSP frame-ancestors.
    pub frame_ancestors: String,
    /// Certificate chain and key (PEM files): serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub shutdown_timeout_secs: u64,
    /// Dev mode: errors and mistakes are shown in the browsers.
    pub dev: bool,
    /// `--cluster`: the NATS server whose JetStream buckets this node
    /// shares with the others; `None`: the embedded database.
    pub cluster: Option<String>,
    /// This node's name (`/healthz`, the NATS connection's name).
    pub node: String,
    /// Cluster mode: the lease time of the once-per-cluster work.
    pub lease: Duration,
    /// Copies NATS keeps of each shared bucket (`--cluster-replicas`).
    pub cluster_replicas: usize,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The projects or the database could not be loaded.
    #[error(transparent)]
    Runtime(#[from] runtime::StartupError),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until it is told to stop.
pub fn run(config: ServerConfig) -> Result<(), StartupError> {
    actix_web::rt::System::new().block_on(serve(config))
}

async fn serve(config: ServerConfig) -> Result<(), StartupError> {
    let store = match &config.cluster {
        Some(url) => runtime::StoreChoice::Cluster {
            url,
            node: &config.node,
            lease: config.lease,
            replicas: config.cluster_replicas,
        },
        None => runtime::StoreChoice::Embedded(&config.database),
    };
    let runtime = Runtime::start(&config.projects_dir, store, &config.users)?;
    if let Some(url) = &config.cluster {
        info!(node = %config.node, "cluster mode: sessions and variables shared through NATS at {url}");
    }
    runtime.set_dev_mode(config.dev);
    if config.dev {
        info!("dev mode: errors are shown in the browsers");
    }
    let state = web::Data::from(runtime.clone());
    let (allowed_hosts, hosts_warning) =
        transport::AllowedHosts::from_settings(&config.allowed_hosts, config.bind);
    if let Some(warning) = hosts_warning {
        warn!("{warning}");
    }
    let web_config = web::Data::new(transport::WebConfig {
        allowed_origins: config.allowed_origins.clone(),
        secure_cookies: config.tls.is_some(),
        allowed_hosts,
        metrics_token: config.metrics_token.clone(),
        new_sessions: transport::SessionBudget::per_minute(config.new_sessions_per_minute)
            .map(std::sync::Arc::new),
        node: config.node.clone(),
    });
    let tls = config.tls.is_some();
    let upgrades = transport::Upgrades::new(runtime.clone(), web_config.clone());
    let frame_ancestors = config.frame_ancestors.clone();
    // The application as actix-web's `HttpServer` serves it: errors become
    // responses. No route reads `connection_info()`, so the default
    // `AppConfig` (scheme and host fallbacks) is enough.
    let app = move || {
        let app = App::new()
            .app_data(state.clone())
            .app_data(web_config.clone())
            .wrap(actix_web::middleware::from_fn(
                transport::refuse_other_hosts,
            ))
            .wrap(transport::security_headers(&frame_ancestors, tls))
            .configure(transport::routes);
        map_config(
            app.into_factory()
                .map_err(|error: actix_web::Error| error.error_response()),
            |_| AppConfig::default(),
        )
    };
    let listener = bind(config.bind).map_err(|source| StartupError::Bind {
        addr: config.bind,
        source,
    })?;
    let addr = listener.local_addr().unwrap_or(config.bind);
    let builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout_secs);
    let shutdown_signal = builder.graceful_shutdown_signal();
    // What actix-web's `HttpServer::listen` does, plus the upgrade service:
    // a WebSocket handshake leaves the HTTP dispatcher (and its two 8 KiB
    // buffers) for a connection of its own (see `transport::websocket`).
    // What actix-web's `HttpServer::listen` builds, plus the upgrade
    // service: a WebSocket handshake leaves the HTTP dispatcher (and its two
    // 8 KiB buffers) for a connection of its own (`transport::Upgrades`).
    macro_rules! http_service {
        () => {{
            let signal = shutdown_signal.clone();
            let upgrades = upgrades.clone();
            HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(KeepAlive::default())
                // Replies and pushes are small writes; with Nagle's algorithm
                // one that follows an unacknowledged one waits for the
                // browser's delayed ACK (milliseconds per click).
                .tcp_nodelay(true)
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .upgrade(fn_service(move |(req, framed)| {
                    upgrades.clone().accept(req, framed)
                }))
                .finish(app())
        }};
    }
    let name = format!("switchboard-{addr}");
    let builder = match &config.tls {
        Some((cert, key)) => {
            let tls = tls_config(cert, key)?;
            builder.listen(name, listener, move || {
                http_service!().rustls_0_23(tls.clone())
            })
        }
        None => builder.listen(name, listener, move || http_service!().tcp()),
    }
    .map_err(|source| StartupError::Bind {
        addr: config.bind,
        source,
    })?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let stop = stop_signal();
    announce(scheme, addr, &runtime.project_names());
    let server = builder.run();
    let handle = server.handle();
    actix_web::rt::spawn(runtime.clone().sweep_idle_sessions());
    actix_web::rt::spawn(reload::watch(runtime.clone()));
    actix_web::rt::spawn(async move {
        stop.await;
        info!("stopping: closing WebSockets");
        runtime.stop().await;
        // Give the close frames a moment to leave before connections drop.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        handle.stop(true).await;
    });
    server.await?;
    info!("stopped");
    Ok(())
}

/// A listening socket as actix-web binds one: address reuse, backlog 1 024.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The first lines on stdout: where to open the projects. Tests read the
/// `listening on` line to find an ephemeral port.
fn announce(scheme: &str, addr: SocketAddr, projects: &[String]) {
    println!("Switchboard listening on {scheme}://{addr}/");
    for name in projects {
        println!("  project {name}: {scheme}://{addr}/{name}/");
    }
    if projects.is_empty() {
        println!("  no projects are served (see the log)");
    }
}

/// A rustls configuration from PEM files, with the `ring` provider (pure
/// Rust and assembly: nothing to build with cmake).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, StartupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls =
        |what: &str, error: &dyn std::fmt::Display| StartupError::Tls(format!("{what}: {error}"));
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(&cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&key.display().to_string(), &e))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls("protocol versions", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| tls("certificate", &e))
}

/// A future that resolves on SIGTERM or Ctrl-C. SIGTERM is caught from
/// the moment this is called, not from the first poll: a supervisor that
/// stops the node right after its `listening` line must get a clean stop
/// (sessions kept, cluster leases handed over), not the default action's
/// abrupt exit.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut terminate) = terminate {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
