#!/usr/bin/env bash
# plexus.sh - peers.sh with a release plexus-proxy as one more target, in the same run.
#
# Usage: bench/peers/plexus.sh [-o results.tsv] [--tls] [peers.sh arguments...]
#   (`cargo xtask bench peers` builds the proxy and runs this.)
# The proxy's outbound listener (127.0.0.1:$PLEXUS_PORT) gets plain HTTP addressed to it, and a
# static destination sends that authority to peers.sh's HTTP/1.1 upstream. The destination's
# protocol hint is `http1`, so h2c clients are translated to HTTP/1.1 as nginx and HAProxy do
# here, and h2load's row compares like with like. TLS rows (nginx and HAProxy terminating TLS)
# only with --tls: the outbound proxy does not terminate the app's TLS.
# Env: PLEXUS_PROXY (the binary, default target/release/plexus-proxy), PLEXUS_PORT (19000),
#   PLEXUS_WORKERS (PLEXUS_WORKER_THREADS; unset: the proxy's default, one thread, as
#   peers.sh's WORKERS=1 gives nginx and HAProxy), and peers.sh's knobs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROXY=${PLEXUS_PROXY:-$HERE/../../target/release/plexus-proxy}
PORT=${PLEXUS_PORT:-19000}
UPSTREAM=127.0.0.1:$((${BASE_PORT:-18000} + 80))
ARGS=(--no-tls) PASS=()
for arg in "$@"; do
  if [ "$arg" = --tls ]; then ARGS=(); else PASS+=("$arg"); fi
done

[ -x "$PROXY" ] || { echo "no $PROXY: cargo build --release -p plexus-proxy" >&2; exit 2; }
T=$(mktemp -d /tmp/plexus-peers.XXXXXX)
cat > "$T/static.yaml" <<YAML
destinations:
  - aliases: ["127.0.0.1:$PORT"]
    target:
      name: bench.default.svc.cluster.local:80
      protocol: { protocol: http1 }
      routes: { default_backend: bench }
      backends:
        backends:
          bench: { name: bench.default.svc.cluster.local:80,
                   endpoints: [{ address: "$UPSTREAM", ready: true }] }
YAML
# `env -u`: the proxy warns of every PLEXUS_* variable it does not read.
env -u PLEXUS_PROXY -u PLEXUS_PORT -u PLEXUS_WORKERS \
  PLEXUS_STATIC_CONFIG="$T/static.yaml" PLEXUS_OUTBOUND_ADDR=127.0.0.1:$PORT \
  PLEXUS_INBOUND_ADDR=127.0.0.1:$((PORT + 6)) PLEXUS_ADMIN_ADDR=127.0.0.1:$((PORT + 20)) \
  PLEXUS_LOG=warn ${PLEXUS_WORKERS:+PLEXUS_WORKER_THREADS=$PLEXUS_WORKERS} \
  "$PROXY" > "$T/proxy.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$T"' EXIT
ready=0
for _ in $(seq 1 100); do  # bounded: 10 s
  if curl -sf "http://127.0.0.1:$((PORT + 20))/ready" >/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" != 1 ]; then echo "plexus-proxy did not become ready:" >&2; cat "$T/proxy.log" >&2; exit 1; fi
"$HERE/peers.sh" "${ARGS[@]}" "${PASS[@]}" "plexus=127.0.0.1:$PORT"
echo "plexus-proxy: $(grep VmRSS /proc/$pid/status)"
if [ -s "$T/proxy.log" ]; then echo "plexus-proxy log (last lines):"; tail -5 "$T/proxy.log"; fi
