# erlmesh container image: build with the Rust toolchain, ship the binary
# alone on a distroless base (glibc, CA-free: erlmesh trusts only its
# cluster CA, mounted at run time).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/erlmesh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/erlmesh /usr/local/bin/erlmesh
# The TLS port; EPMD and the aliases stay on the pod's loopback.
EXPOSE 4370
USER nonroot
ENTRYPOINT ["/usr/local/bin/erlmesh"]
CMD ["run", "--config", "/etc/erlmesh/erlmesh.toml"]
