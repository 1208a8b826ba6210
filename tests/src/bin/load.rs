//! `meshd-load`: simulates a fleet of proxies against the real `meshd run`
//! and reports what it costs (see `meshd_tests::load`).

use clap::Parser;

/// jemalloc, as meshd uses: a fleet decodes megabytes per proxy into
/// short-lived buffers, which glibc's allocator spends much of the client's
/// CPU time on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // One TLS crypto provider for the process, chosen before any TLS use:
    // what Envoy offers.
    meshd_tests::load::xds::envoy_tls_provider()
        .install_default()
        .expect("no TLS provider is installed before main");
    // Quiet unless asked (`MESHD_LOG=meshd_tests::load=debug` shows every
    // response each proxy receives); stdout carries the summary, or a
    // worker's reports.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    meshd_tests::load::run::main(meshd_tests::load::Args::parse())
}
