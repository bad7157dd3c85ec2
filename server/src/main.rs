//! The `balint-room` binary: configuration, logging, signals. Everything else is in the library.

use balint_server::config::{Config, LogFormat};
use balint_server::Server;
use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Every freed block is zeroed: see `balint_server::wipe`.
#[cfg(feature = "wipe-freed-memory")]
#[global_allocator]
static ALLOCATOR: balint_server::wipe::WipingAllocator = balint_server::wipe::WipingAllocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        // Logs go to standard error; standard output carries only the banner below.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_writer(std::io::stderr).with_env_filter(filter).init(),
    }
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("Balint Room is running on http://{addr}");
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.run().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
