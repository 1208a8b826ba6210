# syntax=docker/dockerfile:1
#
# The meshd image. It runs the control plane (`meshd run`, the chart's
# Deployment) and, in every meshed pod, the traffic-capture init container
# (`meshd capture`: the injector uses this same image, MESHD_INIT_IMAGE).
#
#   docker build -t ghcr.io/meshd/meshd:0.1.0 .
#
# Why Debian slim and not distroless: `meshd capture` installs its rules with
# iptables-restore, which a distroless image cannot provide. Two images
# (distroless for the control plane, Debian with iptables for the init
# container) would shave some 50 MB off the control plane's image only, at the
# price of a second image to build, publish and keep in step with the first.
# So: one image, as small as Debian allows (no recommends, no apt lists), that
# runs as the non-root user 65532 unless told otherwise. The init container is
# the one that runs as root, with only NET_ADMIN and NET_RAW (the injector
# sets that on the container; nothing here is setuid).
#
# Debian's iptables is the nf_tables variant (iptables-nft), which takes no
# lock file: it works on the init container's read-only root filesystem.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own: only the manifests and the
# lockfile, with empty stand-ins for every target so cargo can read the
# workspace. This layer (and the download) is reused until a manifest or the
# lockfile changes. A new workspace member needs its manifest listed here.
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml proto/
COPY ca/Cargo.toml ca/
COPY api/Cargo.toml api/
COPY controlplane/Cargo.toml controlplane/
COPY injector/Cargo.toml injector/
COPY k8s/Cargo.toml k8s/
COPY meshd/Cargo.toml meshd/
COPY tests/Cargo.toml tests/
RUN set -eu; \
    for manifest in */Cargo.toml; do \
      crate=$(dirname "$manifest"); \
      mkdir -p "$crate/src" "$crate/benches"; \
      touch "$crate/src/lib.rs"; \
      for bench in $(sed -n '/^\[\[bench\]\]/,/^$/ s/^name *= *"\(.*\)"/\1/p' "$manifest"); do \
        touch "$crate/benches/$bench.rs"; \
      done; \
      for path in $(sed -n 's/^path *= *"\(.*\.rs\)"/\1/p' "$manifest"); do \
        mkdir -p "$crate/$(dirname "$path")"; touch "$crate/$path"; \
      done; \
    done; \
    cargo fetch --locked; \
    rm -rf */src */benches

# Then the sources. The target directory is a BuildKit cache mount, so a
# rebuild after a source change recompiles only the crates that changed.
COPY . .
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p meshd \
    && install -m 0755 target/release/meshd /usr/local/bin/meshd

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/meshd /usr/local/bin/meshd
# 65532: the conventional "nonroot" user of distroless images, which the
# chart's securityContext also names. No home, no shell login needed.
USER 65532:65532
ENTRYPOINT ["meshd"]
CMD ["run"]
