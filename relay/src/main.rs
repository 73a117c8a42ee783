//! The `relay` command line.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use relay::config::Config;

/// A real-time relay for Yjs documents (y-websocket protocol, durable storage in redb).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve(Config),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    relay::telemetry::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config).await,
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    raise_file_limit(config.max_connections);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    // The one line on standard output: scripts and tests read the port from it.
    println!("listening on http://{addr}");
    std::io::stdout().flush().ok();

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    relay::run(config, listener, shutdown).await?;
    Ok(())
}

/// Each connection needs a file descriptor, and the default soft limit (often 1024) is far below
/// `--max-connections`: raise it to the hard limit, and say so if that is still too low.
fn raise_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // Room for the store, the listener and HTTP requests besides the sockets.
            let needed = max_connections as u64 + 64;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open-file limit is below --max-connections; raise it (ulimit -n) or lower --max-connections"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
    shutdown.cancel();
}
