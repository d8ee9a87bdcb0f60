# erlmesh container image: build with the Rust toolchain, ship the binary
# alone on a distroless base (glibc, CA-free: erlmesh trusts only its
# cluster CA, mounted at run time).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/erlmesh

# The transparent-mode image (`docker build --target transparent`): the
# same binary with nft, which applies the rules (the sidecar runs as root
# with NET_ADMIN, see deploy/k8s/erlmesh-transparent.yaml).
FROM debian:bookworm-slim AS transparent
RUN apt-get update && apt-get install -y --no-install-recommends nftables && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/erlmesh /usr/local/bin/erlmesh
EXPOSE 4370
ENTRYPOINT ["/usr/local/bin/erlmesh"]
CMD ["run", "--config", "/etc/erlmesh/erlmesh.toml"]

# The default image (last stage): resolver mode, distroless, not root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/erlmesh /usr/local/bin/erlmesh
# The TLS port; EPMD and the aliases stay on the pod's loopback.
EXPOSE 4370
USER nonroot
ENTRYPOINT ["/usr/local/bin/erlmesh"]
CMD ["run", "--config", "/etc/erlmesh/erlmesh.toml"]
