# huntflow image: one binary, ENTRYPOINT huntflow; the Kubernetes manifests
# pass only arguments (no shell needed). Build from the repository root:
#   docker build -t huntflow:0.1.0 .
# (BuildKit, the default builder, keeps the cargo registry and target dir in
# cache mounts between builds.)

FROM rust:1.95-slim-bookworm AS build
# RocksDB's bindgen loads libclang; librdkafka builds with OpenSSL (SASL_SSL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev g++ make perl pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin huntflow \
 && cp target/release/huntflow /huntflow

FROM debian:bookworm-slim AS runtime
# libssl3/ca-certificates: SASL_SSL to Kafka and HTTPS to Kinesis; libstdc++6: RocksDB.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libstdc++6 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 huntflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/huntflow --shell /usr/sbin/nologin huntflow \
 && mkdir -p /var/lib/huntflow /etc/huntflow \
 && chown 10001:10001 /var/lib/huntflow
COPY --from=build /huntflow /usr/local/bin/huntflow
USER 10001:10001
WORKDIR /var/lib/huntflow
# ingest 8080, query API 8081, worker / bridge metrics 9464.
EXPOSE 8080 8081 9464
ENTRYPOINT ["/usr/local/bin/huntflow"]
CMD ["--help"]
