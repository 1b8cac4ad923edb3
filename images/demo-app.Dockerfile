# syntax=docker/dockerfile:1.7
# The demo application (`cargo xtask demo-app`: frontend or backend by --role), used by
# manifests/demo.yaml. Build from the workspace root:
#   docker build -f images/demo-app.Dockerfile -t plexus/demo-app:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p xtask \
    && install -D target/release/xtask /out/xtask

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/xtask /usr/local/bin/xtask
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/xtask", "demo-app"]
