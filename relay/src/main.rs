//! The `relay` command line.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use relay::cli;
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
    Serve(Box<Config>),
    /// Print a signed client token (the token alone, on standard output).
    Token(TokenArgs),
    /// Work on the documents of a data directory (the relay must not be running on it).
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
    /// Fold every document's update log into a snapshot and shrink the store file.
    Compact(DataDir),
    /// Check that every stored document loads; exits non-zero if one does not.
    Check(DataDir),
    /// Work on a cluster's documents in NATS JetStream.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Back to one node: write every document the cluster's streams hold into a new store in
    /// --data-dir, for a relay started there without --nats. Only reads; the cluster may run.
    Export {
        /// The cluster's NATS servers, as given to the relays.
        #[arg(
            long = "nats",
            env = "RELAY_NATS",
            value_delimiter = ',',
            required = true
        )]
        nats: Vec<String>,
        /// A new data directory (refused if it holds a store already).
        #[arg(long, env = "RELAY_DATA_DIR")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// The relay's data directory.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./data")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The document the token is for.
    #[arg(long, conflicts_with = "doc_prefix")]
    doc: Option<String>,
    /// Or: every document whose name starts with this.
    #[arg(long)]
    doc_prefix: Option<String>,
    /// read, write or admin. An admin token without a document covers every document.
    #[arg(long, default_value = "write")]
    access: relay::auth::Access,
    /// How long the token is valid: 30s, 15m, 1h, 7d, ...
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// The user's id.
    #[arg(long)]
    sub: Option<String>,
    /// The user's display name.
    #[arg(long)]
    name: Option<String>,
    /// The secret the relay runs with (`relay serve --secret`); the first one signs.
    #[arg(
        long = "secret",
        env = "RELAY_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    secrets: Vec<relay::config::Secret>,
}

#[derive(Debug, Subcommand)]
enum DocsCommand {
    /// List documents: name, stored bytes, last change (UTC).
    List(DataDir),
    /// Write a document as one binary Yjs update (or --json) to standard output.
    Export {
        /// The document.
        name: String,
        /// The root types as JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Merge a binary Yjs update from FILE into a document, creating it if needed.
    Import {
        /// The document.
        name: String,
        /// The update file.
        file: std::path::PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Delete a document.
    Delete {
        /// The document.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    relay::telemetry::init_logging();
    let result = match cli.command {
        Command::Serve(config) => serve_blocking(*config),
        Command::Token(args) => token(args),
        Command::Docs { command } => docs(command),
        Command::Compact(dir) => compact(&dir),
        Command::Check(dir) => check(&dir),
        Command::Cluster { command } => cluster(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_blocking(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secrets: Vec<String> = args.secrets.into_iter().map(|s| s.0).collect();
    let token = cli::token(
        &secrets,
        cli::TokenRequest {
            doc: args.doc,
            doc_prefix: args.doc_prefix,
            access: args.access,
            ttl: args.ttl,
            sub: args.sub,
            name: args.name,
        },
    )?;
    println!("{token}");
    Ok(())
}

fn docs(command: DocsCommand) -> anyhow::Result<()> {
    match command {
        DocsCommand::List(dir) => {
            let store = cli::open_store(&dir.data_dir, false)?;
            print!("{}", cli::list(&store)?);
        }
        DocsCommand::Export { name, json, dir } => {
            let store = cli::open_store(&dir.data_dir, false)?;
            let bytes = cli::export(&store, &name, json)?;
            std::io::stdout()
                .write_all(&bytes)
                .context("cannot write to standard output")?;
        }
        DocsCommand::Import { name, file, dir } => {
            let update =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let store = cli::open_store(&dir.data_dir, true)?;
            let changed = cli::import(&store, &name, update)?;
            eprintln!(
                "{}",
                if changed {
                    format!("imported into {name:?}")
                } else {
                    format!("{name:?} already had everything in the file")
                }
            );
        }
        DocsCommand::Delete { name, dir } => {
            let store = cli::open_store(&dir.data_dir, false)?;
            cli::delete(&store, &name)?;
            eprintln!("deleted {name:?}");
        }
    }
    Ok(())
}

fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Export { nats, data_dir } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = runtime.block_on(relay::cluster::export::export(&nats, &data_dir))?;
            eprintln!(
                "exported {} documents ({} bytes) to {}; {} deleted documents skipped. Start a relay there without --nats.",
                report.documents,
                report.bytes,
                data_dir.display(),
                report.deleted
            );
        }
    }
    Ok(())
}

fn compact(dir: &DataDir) -> anyhow::Result<()> {
    let store = cli::open_store(&dir.data_dir, false)?;
    let report = cli::compact(store)?;
    eprintln!(
        "compacted {} documents ({} log entries folded into snapshots)",
        report.rooms_compacted, report.entries_folded
    );
    Ok(())
}

fn check(dir: &DataDir) -> anyhow::Result<()> {
    let store = cli::open_store(&dir.data_dir, false)?;
    let (checked, broken) = cli::check(&store)?;
    for problem in &broken {
        eprintln!("{problem}");
    }
    if broken.is_empty() {
        eprintln!("all {checked} documents load");
        Ok(())
    } else {
        anyhow::bail!("{} of {checked} documents do not load", broken.len())
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    raise_file_limit(config.max_connections, config.max_http_connections);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    relay::run_with_ready(config, listener, shutdown, |addr| {
        // The one line on standard output, once the store is open: scripts and tests read the
        // port from it.
        println!("listening on http://{addr}");
        std::io::stdout().flush().ok();
    })
    .await?;
    Ok(())
}

/// Each connection needs a file descriptor, and the default soft limit (often 1024) is far below
/// `--max-connections`: raise it to the hard limit, and say so if that is still too low.
fn raise_file_limit(max_connections: usize, max_http_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // WebSockets and HTTP connections, and room for the store and the listener.
            let needed = (max_connections + max_http_connections) as u64 + 64;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    max_http_connections,
                    "the open-file limit is below --max-connections plus --max-http-connections; raise it (ulimit -n) or lower them"
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
