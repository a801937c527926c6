# syntax=docker/dockerfile:1
# Build: docker build -t ipstats .
# Run:   docker run -p 8080:8080 ipstats                       (embedded demo)
#        docker run -p 8080:8080 -e IPSTATS_BROKERS=kafka:9092 ipstats
# Exposed beyond one host: mount a token file and pass
#        -e IPSTATS_AUTH_TOKEN_FILE=/run/secrets/ipstats-token

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY static ./static
COPY openapi.yaml README.md ./
RUN cargo build --release --locked --bin ipstats \
 && strip target/release/ipstats

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ipstats --create-home ipstats
COPY --from=build /src/target/release/ipstats /usr/local/bin/ipstats
USER ipstats
WORKDIR /var/lib/ipstats
ENV IPSTATS_LISTEN=0.0.0.0:8080 \
    IPSTATS_CHECKPOINT_DIR=/var/lib/ipstats/checkpoint
EXPOSE 8080
VOLUME ["/var/lib/ipstats"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/ipstats"]
