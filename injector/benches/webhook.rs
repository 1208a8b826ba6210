//! Admission webhook latency under load (issue #4).
//!
//! Starts the webhook in-process on 127.0.0.1 (a generated CA in a
//! temporary directory, the default injector configuration, a provisioner
//! that answers at once), then runs 64 clients at once, each on its own
//! keep-alive HTTPS connection that verifies the server as the API server
//! does, each posting Pod reviews back to back for 10 s after a 1 s
//! warm-up. The clients write each request as bytes encoded once and read
//! answers into a reused buffer (`RawClient`), so that they take as little
//! of the shared cores as they can: what is measured is the server. Prints the latency of each review as the client sees it
//! (request written to response read) at p50, p90, p99, p99.9 and max,
//! and the reviews answered per second.
//!
//! Run with `cargo bench -p meshd-injector --bench webhook`. The number of
//! clients and seconds can be changed with `WEBHOOK_BENCH_CLIENTS` and
//! `WEBHOOK_BENCH_SECONDS`. Clients and server share the machine's cores,
//! and by default one Tokio runtime. It also prints the CPU time the
//! process used while measuring, per review.
//!
//! With `WEBHOOK_BENCH_SPLIT=1` the server runs on a runtime of its own
//! (threads `webhook-server`, the clients' are `bench-client`), so the CPU
//! time of each side can be told apart: it prints how much of a core each
//! used per review, from the threads' times in `/proc` (Linux). The OS then
//! schedules four worker threads on the cores, so latencies from this mode
//! are not the reference ones.

#[path = "../tests/webhook_support/mod.rs"]
mod webhook_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use webhook_support::{FakeProvisioner, RawAnswer, RawClient, Server, pod, review_of};

const WARM_UP: Duration = Duration::from_secs(1);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    allowed_with_patch: u64,
    other_answers: u64,
    first_other: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

const CLIENT_THREADS: &str = "bench-client";
const SERVER_THREADS: &str = "webhook-server";

fn runtime(threads: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(threads)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn main() {
    let clients = env_or("WEBHOOK_BENCH_CLIENTS", 64) as usize;
    let seconds = env_or("WEBHOOK_BENCH_SECONDS", 10);
    let split = env_or("WEBHOOK_BENCH_SPLIT", 0) == 1;
    let runtime = runtime(CLIENT_THREADS);
    let server_runtime = split.then(|| self::runtime(SERVER_THREADS));
    core_costs();
    let server = server_runtime.as_ref().map(|r| r.handle().clone());
    runtime.block_on(run(clients, Duration::from_secs(seconds), server));
}

/// CPU time (user and system) of this process's threads, by thread name:
/// clock ticks from `/proc/self/task/*/stat`.
fn cpu_ticks_by_thread() -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // After the parenthesised name: state, ppid, ..., then utime
            // and stime (fields 14 and 15 of the line).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((name.trim().to_string(), ticks))
        })
        .collect()
}

/// Linux's USER_HZ, which `/proc` counts CPU time in.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds spent between two samples by the threads whose name starts
/// with `prefix` (all of them with "").
fn cpu_seconds(before: &[(String, u64)], after: &[(String, u64)], prefix: &str) -> f64 {
    let total = |sample: &[(String, u64)]| -> u64 {
        sample
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, ticks)| ticks)
            .sum()
    };
    total(after).saturating_sub(total(before)) as f64 / TICKS_PER_SECOND
}

async fn run(clients: usize, measure: Duration, server_runtime: Option<tokio::runtime::Handle>) {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = match server_runtime {
        // Started from a task of the server's runtime, so its tasks (and
        // the connections' tasks) run there.
        Some(runtime) => {
            let provisioner = provisioner.clone();
            runtime
                .spawn(async move { Server::start(Some(provisioner)).await })
                .await
                .expect("the server starts")
        }
        None => Server::start(Some(provisioner.clone())).await,
    };

    // One review per client: different apps and service accounts.
    let reviews: Vec<Vec<u8>> = (0..clients)
        .map(|i| {
            let app = format!("app-{:02}", i % 16);
            let review = review_of(
                &format!("bench-{i}"),
                ("", "v1", "Pod"),
                pod(&app, &app),
                false,
            );
            review.to_string().into_bytes()
        })
        .collect();
    let review_bytes = reviews[0].len();

    let started = Instant::now();
    let warm_until = started + WARM_UP;
    let stop_at = warm_until + measure;
    let mut tasks = Vec::new();
    for (i, body) in reviews.into_iter().enumerate() {
        let mut client = server.raw_client().await;
        let request = RawClient::encode("/inject", &body);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut patch_bytes = 0;
            let mut checked = false;
            loop {
                let sent = Instant::now();
                if sent >= stop_at {
                    break;
                }
                let RawAnswer { status, body: raw } = client
                    .round_trip(&request)
                    .await
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                let took = sent.elapsed();
                if sent < warm_until {
                    continue;
                }
                tally.latencies.push(took);
                // The first answer is checked in full; after that only as
                // much as needed, so the clients spend the machine's cores
                // on as little as possible besides the server.
                let ok = status == 200
                    && if checked {
                        std::str::from_utf8(raw).is_ok_and(|text| {
                            text.contains(r#""allowed":true"#)
                                && text.contains(r#""patchType":"JSONPatch""#)
                        })
                    } else {
                        checked = true;
                        patch_bytes = full_check(raw);
                        patch_bytes > 0
                    };
                if ok {
                    tally.allowed_with_patch += 1;
                } else {
                    tally.other_answers += 1;
                    tally.first_other.get_or_insert_with(|| {
                        format!("HTTP {status}: {}", String::from_utf8_lossy(raw))
                    });
                }
            }
            (tally, patch_bytes)
        }));
    }
    tokio::time::sleep_until(warm_until.into()).await;
    let cpu_before = cpu_ticks_by_thread();
    tokio::time::sleep_until(stop_at.into()).await;
    let cpu_after = cpu_ticks_by_thread();
    let mut all = Tally::default();
    let mut patch_bytes = 0;
    for task in tasks {
        let (tally, bytes) = task.await.expect("a client task");
        all.latencies.extend(tally.latencies);
        all.allowed_with_patch += tally.allowed_with_patch;
        all.other_answers += tally.other_answers;
        if all.first_other.is_none() {
            all.first_other = tally.first_other;
        }
        patch_bytes = patch_bytes.max(bytes);
    }
    all.latencies.sort();
    let answered = all.latencies.len();

    println!(
        "admission webhook: {clients} clients, keep-alive HTTPS, {measure:?} after a {WARM_UP:?} warm-up"
    );
    println!("review size: {review_bytes} bytes; base64 patch: {patch_bytes} bytes");
    println!(
        "reviews: {answered} ({:.0}/s); allowed with a patch: {}; other answers: {}",
        answered as f64 / measure.as_secs_f64(),
        all.allowed_with_patch,
        all.other_answers
    );
    if let Some(other) = &all.first_other {
        println!("first other answer: {other}");
    }
    println!(
        "latency: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
        ms(percentile(&all.latencies, 50.0)),
        ms(percentile(&all.latencies, 90.0)),
        ms(percentile(&all.latencies, 99.0)),
        ms(percentile(&all.latencies, 99.9)),
        ms(all.latencies.last().copied().unwrap_or_default()),
    );
    let per_review = |seconds: f64| seconds / answered.max(1) as f64 * 1e6;
    let cpu = |prefix: &str| {
        let seconds = cpu_seconds(&cpu_before, &cpu_after, prefix);
        format!(
            "{:.2} cores, {:.1} µs per review",
            seconds / measure.as_secs_f64(),
            per_review(seconds)
        )
    };
    if server_runtime_used(&cpu_after) {
        println!(
            "CPU while measuring: server ({SERVER_THREADS} threads) {}; clients ({CLIENT_THREADS} threads) {}; whole process {}",
            cpu(SERVER_THREADS),
            cpu(CLIENT_THREADS),
            cpu("")
        );
    } else {
        println!("CPU while measuring (server and clients): {}", cpu(""));
    }
    println!(
        "identity Secrets ensured: {}",
        provisioner.calls.lock().map(|c| c.len()).unwrap_or(0)
    );
    let _ = server.stop().await;
}

/// Whether the server has threads of its own (`WEBHOOK_BENCH_SPLIT=1`).
fn server_runtime_used(sample: &[(String, u64)]) -> bool {
    sample
        .iter()
        .any(|(name, _)| name.starts_with(SERVER_THREADS))
}

/// Checks an answer in full: allowed, with a base64 JSON Patch that adds
/// the proxy to the pod. Returns the encoded patch's length (0: not so).
fn full_check(raw: &[u8]) -> usize {
    use base64::Engine;
    let Ok(answer) = serde_json::from_slice::<Value>(raw) else {
        return 0;
    };
    let response = &answer["response"];
    let Some(encoded) = response["patch"].as_str() else {
        return 0;
    };
    if response["allowed"] != true {
        return 0;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return 0;
    };
    let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(&decoded) else {
        return 0;
    };
    let mut object = pod("app-00", "app-00");
    if json_patch::patch(&mut object, &patch).is_err() {
        return 0;
    }
    let proxy = ["containers", "initContainers"].iter().any(|list| {
        object["spec"][list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "meshd-proxy"))
    });
    if proxy { encoded.len() } else { 0 }
}

/// Single-threaded cost of the pure core, without HTTP or TLS: decoding
/// the Pod, injecting it as the webhook does (`inject_patch`, the patch
/// written out as JSON) and as `meshd inject` does (`inject`, a
/// `json_patch::Patch` with its values built out).
fn core_costs() {
    use meshd_injector::inject::{Injection, inject, inject_patch};
    let config = meshd_injector::config::InjectorConfig::default();
    let bytes = pod("app-00", "app-00").to_string();
    let rounds = 2_000;
    let mean = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        for _ in 0..rounds {
            f();
        }
        (started.elapsed() / rounds).as_secs_f64() * 1e6
    };
    let decode = mean(&mut || {
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_str(std::hint::black_box(&bytes)).expect("a Pod");
        std::hint::black_box(pod);
    });
    let decode_for_injection = mean(&mut || {
        let pod: meshd_injector::inject::PodForInjection =
            serde_json::from_str(std::hint::black_box(&bytes)).expect("a Pod");
        std::hint::black_box(pod);
    });
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&bytes).expect("a Pod");
    let webhook = mean(&mut || {
        let injection = inject_patch(std::hint::black_box(&pod), "shop", &config);
        let Ok(Injection::Patched { patch, .. }) = injection else {
            panic!("not injected")
        };
        std::hint::black_box(patch.to_json().expect("the patch as JSON"));
    });
    let offline = mean(&mut || {
        let injection = inject(std::hint::black_box(&pod), "shop", &config);
        std::hint::black_box(injection.is_ok());
    });
    println!(
        "single-threaded core: Pod decode {decode:.1} µs (the whole Pod), {decode_for_injection:.1} µs (PodForInjection, the webhook's), inject_patch + patch JSON {webhook:.1} µs (the webhook's), inject {offline:.1} µs (a json_patch::Patch) (mean of {rounds})"
    );
}
