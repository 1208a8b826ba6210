//! `meshd`: the service mesh control plane and its helper commands.

mod args;
mod commands;
mod inspect;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc, with its background threads on: memory that thousands of
/// proxies' streams free (a fleet reconnecting, a push's buffers) goes back
/// to the system within seconds, where glibc's per-thread arenas kept it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One TLS crypto provider for the process, chosen before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only for a person at a terminal: in a file or a log
        // collector the escape codes are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on: the cause chain, no backtrace.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once. Library errors often put
/// their cause in their own message (`"{path}: {source}"`) and return it
/// as their source too, which `{:#}` would print a second time.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
