# syntax=docker/dockerfile:1.7
# The Plexus proxy image: the sidecar (plexus-proxy) and the init container's plexus-init,
# which needs iptables. Build from the workspace root:
#   docker build -f images/proxy.Dockerfile -t plexus/proxy:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p plexus-proxy -p plexus-init \
    && install -D target/release/plexus-proxy /out/plexus-proxy \
    && install -D target/release/plexus-init /out/plexus-init

# iptables needs a shell-less but complete userland (libs, xtables modules), so a slim
# Debian rather than distroless. Debian's default `iptables` is the nf_tables backend;
# iproute2's `ip` gives IPv6 pods the inbound proxy's source address ::6 on lo.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 2102 plexus-proxy \
    && useradd --uid 2102 --gid 2102 --no-create-home --shell /usr/sbin/nologin plexus-proxy
COPY --from=build /out/plexus-proxy /out/plexus-init /usr/local/bin/
# The proxy runs as 2102, the UID plexus-init's rules exempt from redirection. The injector
# runs plexus-init from this image as root with NET_ADMIN/NET_RAW only.
USER 2102:2102
EXPOSE 15001 15006 15020
ENTRYPOINT ["/usr/local/bin/plexus-proxy"]
