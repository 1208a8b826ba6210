//! Compiles the mesh's own gRPC services (`meshd/**/*.proto`).
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so building needs no
//! system `protoc` and downloads nothing. It is handed to prost through its
//! config rather than the `PROTOC` environment variable: changing the
//! environment of a running process is `unsafe` in edition 2024, and the
//! workspace forbids `unsafe`.
//!
//! Envoy's types are not compiled here (they come from `envoy-types`); the
//! well-known types our protos use resolve to `envoy-types`' copies, so the
//! workspace has one `google.protobuf.Duration`, not two.

use std::path::PathBuf;

const PROTOS: &[&str] = &["meshd/ca/v1/ca.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(
            ".google.protobuf.Duration",
            "::envoy_types::pb::google::protobuf::Duration",
        )
        .compile_with_config(config, &protos, &[root.clone(), well_known])?;
    Ok(())
}
