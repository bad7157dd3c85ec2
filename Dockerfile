# syntax=docker/dockerfile:1
#
# Balint Room server image: `docker build -t balint-room .`, or `docker compose up --build`
# with docker-compose.yml beside this file. Needs BuildKit (the default builder of current
# Docker releases) for the cache mounts below.

############################################################################################
# Build stage: the `balint-room` binary.
############################################################################################
FROM rust:1-bookworm AS builder

WORKDIR /src

# The whole workspace: Cargo resolves every member (proto, server, client-wasm, tests) even
# when it builds one package, and `--locked` needs Cargo.lock. .dockerignore keeps target/,
# node_modules/, data/ and .git/ out.
COPY . .

# The crate downloads and target/ are kept between builds in BuildKit cache mounts, so a
# rebuild recompiles only what changed. Cached artifacts of registry crates are keyed by
# version and checksum and are always safe to reuse; the workspace's own crates are judged
# by file times, and the copied sources can carry times older than the cached artifacts
# (COPY keeps them), so every copied file is touched first: the workspace crates are always
# rebuilt from exactly these sources. target/ is a cache mount, not part of any layer, so
# the binary is copied out of it in the same step.
RUN --mount=type=cache,id=balint-room-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=balint-room-target,target=/src/target,sharing=locked \
    find . -path ./target -prune -o -type f -exec touch {} + \
 && cargo build --release --locked -p balint-server --bin balint-room \
 && install -D -m 0755 target/release/balint-room /out/balint-room

############################################################################################
# Web stage: the browser client (balint-client built for wasm32, with its wasm-bindgen glue)
# beside the UI's HTML, CSS and JS. A stage of its own, so it builds in parallel with the
# server. client-wasm/build-web.sh adds the wasm32 target and installs wasm-bindgen-cli at
# the version in Cargo.lock, then writes web/assets/pkg.
############################################################################################
FROM rust:1-bookworm AS web

WORKDIR /src
COPY . .
RUN --mount=type=cache,id=balint-room-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=balint-room-web-target,target=/src/target,sharing=locked \
    find . -path ./target -prune -o -type f -exec touch {} + \
 && client-wasm/build-web.sh \
 && mkdir -p /out \
 && cp -r web /out/web

############################################################################################
# Runtime stage: the binary on a slim Debian (same release as the builder, so same glibc).
############################################################################################
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged user. /data is created and owned by it before it is declared a
# volume, so a fresh volume mounted there starts with that ownership.
RUN groupadd --system --gid 10001 balint \
 && useradd --system --uid 10001 --gid balint --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin balint \
 && mkdir -p /data \
 && chown balint:balint /data \
 && chmod 0700 /data

COPY --from=builder /out/balint-room /usr/local/bin/balint-room
COPY --from=web /out/web /usr/share/balint-room/web

# BALINT_DATA_DIR keeps the generated signing secret when BALINT_SECRET is not given.
# Every flag has a variable (see the configuration table in README.md): pass them with -e.
ENV BALINT_BIND=0.0.0.0:8080 \
    BALINT_DATA_DIR=/data \
    BALINT_WEB_DIR=/usr/share/balint-room/web

VOLUME ["/data"]
WORKDIR /data
USER balint:balint
EXPOSE 8080

# No curl in the image: bash (always present in Debian) speaks just enough HTTP over
# /dev/tcp. The port is taken from BALINT_BIND, so `-e BALINT_BIND=0.0.0.0:9000` keeps the
# check working. This checks liveness (/healthz); docker-compose.yml overrides it with
# readiness (/readyz, which also needs the Redis backend to answer).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${BALINT_BIND##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# The server handles SIGTERM itself: it closes every WebSocket with 1012 (clients reconnect,
# possibly to another node) and waits up to 10 s for them.
ENTRYPOINT ["/usr/local/bin/balint-room"]
