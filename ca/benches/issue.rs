//! How fast the CA issues workload certificates (issue #3).
//!
//! The authority is a generated ECDSA P-256 root persisted in a temporary
//! directory, as in local mode. Every leaf is for
//! `spiffe://cluster.local/ns/shop/sa/web` and lasts 24 hours.
//!
//! What is measured:
//! - `issue_with_key`: a fresh ECDSA P-256 key, then a certificate over it,
//!   with the key serialised to PEM: what the control plane does per proxy
//!   per rotation;
//! - `issue`: a certificate over a public key generated once: the signing
//!   alone;
//! - `sign_csr`: a PEM CSR naming the caller's identity, parsed, its
//!   signature verified and its identity checked, then signed: what the CSR
//!   service does per request.
//!
//! Each iteration issues one certificate, so Criterion reports certificates
//! per second. The benchmark is single-threaded: the rates are per core.
//!
//! Run with `cargo bench -p meshd-ca --bench issue`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshd_ca::{Authority, DirStore, SpiffeId};
use rcgen::{CertificateParams, KeyPair, SanType};

const TRUST_DOMAIN: &str = "cluster.local";
const TTL: Duration = Duration::from_secs(24 * 3600);

fn issue(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = Authority::load_or_generate(TRUST_DOMAIN, Arc::new(DirStore::new(dir.path())))
        .expect("a generated root");
    let id = SpiffeId::new(TRUST_DOMAIN, "shop", "web");

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a workload key");

    let csr_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a CSR key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        id.to_string().try_into().expect("an IA5 SPIFFE ID"),
    )];
    let csr_pem = params
        .serialize_request(&csr_key)
        .and_then(|csr| csr.pem())
        .expect("a PEM CSR");
    // The CSR is one the CA accepts, so the benchmark times a signing and
    // not a refusal.
    ca.sign_csr(&csr_pem, &id, TTL).expect("the CSR is signed");

    let mut group = c.benchmark_group("ca");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    group.bench_function("issue_with_key", |b| {
        b.iter(|| ca.issue_with_key(black_box(&id), TTL).expect("issued"));
    });

    group.bench_function("issue", |b| {
        b.iter(|| {
            ca.issue(black_box(&id), black_box(&key), TTL)
                .expect("issued")
        });
    });

    group.bench_function("sign_csr", |b| {
        b.iter(|| {
            ca.sign_csr(black_box(&csr_pem), black_box(&id), TTL)
                .expect("issued")
        });
    });

    group.finish();
}

criterion_group!(benches, issue);
criterion_main!(benches);
