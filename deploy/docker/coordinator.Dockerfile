# syntax=docker/dockerfile:1
#
# kubetemplater-coordinator (the coordinator: leader election, the bucket map, handoffs, TenantRegistry syncs, admin API):
# a static musl build in a distroless, non-root image holding nothing but the binary.
#
# Build from the repository root, which is the context (the whole Cargo workspace is needed to
# resolve it; coordinator.Dockerfile.dockerignore beside this file keeps target/, .local/ and .git/ out):
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t <registry>/kubetemplater-coordinator:0.1.0 .
#
# See deploy/docker/README.md. It cannot be built on the project's development machine (no
# Docker engine, no registry).

# --- build ----------------------------------------------------------------------------------
# amd64 on purpose: the target is x86_64-unknown-linux-musl, and musl-tools' musl-gcc compiles
# for the build stage's own architecture (elsewhere the stage runs emulated).
FROM --platform=linux/amd64 rust:1-bookworm AS build

# musl-tools provides musl-gcc, the C compiler of the musl target. C and assembly in this
# binary's dependencies: ring (rustls), psm/stacker (via pest, used by kube's jsonpath-rust) and
# libsqlite3-sys (sqlx's SQLite for TenantRegistries, bundled: sqlite3.c is compiled here, no
# system library). All of it builds with musl-gcc; nothing links OpenSSL or another system
# library, and proto/build.rs needs no protoc (protox). The workspace needs Rust 1.95 or newer.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_TERM_COLOR=never

WORKDIR /src
COPY . .
# The registry and target directories are BuildKit caches, so the binary is copied out within
# the same step. --locked: exactly the versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
        --package kubetemplater-coordinator --bin kubetemplater-coordinator \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/kubetemplater-coordinator \
        /out/kubetemplater-coordinator

# --- run ------------------------------------------------------------------------------------
# distroless/static: CA certificates, /etc/passwd with "nonroot" (65532), no shell, no libc.
FROM --platform=linux/amd64 gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubetemplater-coordinator /usr/local/bin/kubetemplater-coordinator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubetemplater-coordinator"]
