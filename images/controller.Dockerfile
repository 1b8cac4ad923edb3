# syntax=docker/dockerfile:1.7
# The Plexus controller image. Build from the workspace root:
#   docker build -f images/controller.Dockerfile -t plexus/controller:0.1.0 .
# (`cargo xtask images` does this for all images.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between image builds; the binary is copied
# out of the cached target directory because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p plexus-controller \
    && install -D target/release/plexus-controller /out/plexus-controller

# glibc and CA certificates only; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/plexus-controller /usr/local/bin/plexus-controller
# distroless' "nonroot" user; the chart sets runAsUser 65532 too.
USER 65532:65532
EXPOSE 8090 8443 9990
ENTRYPOINT ["/usr/local/bin/plexus-controller"]
