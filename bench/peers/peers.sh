#!/usr/bin/env bash
# peers.sh - side-by-side L7 HTTP proxy benchmark on loopback.
#
# Starts an nginx upstream (return 200, fixed body), nginx as reverse proxy and
# HAProxy in http mode, all on 127.0.0.1 with temp config/log dirs under /tmp,
# drives them with wrk (HTTP/1.1), h2load (h2c / h2 over TLS) and
# `openssl s_time` (TLS vs mTLS full handshakes), prints one table and stops
# only the processes it started (by PID).
#
# Usage: bench/peers/peers.sh [-o results.tsv] [--no-tls] [name=host:port | name=https://host:port ...]
#   name=host:port          extra cleartext target (your proxy) measured in the same run;
#                           h2c is probed and measured if the target speaks it.
#   name=https://host:port  extra TLS target (wrk over https + h2load if ALPN h2).
#   Extra targets must be loopback (127.0.0.0/8, localhost, [::1]); they must
#   forward to the upstream printed at start (default 127.0.0.1:18080 for h1,
#   :18081 for h2c). RSS is taken from the PIDs listening on their port.
# Environment knobs (defaults): DURATION=10 LAT_DURATION=10 WARMUP=2 CONNS=16
#   H2_CONNS=4 H2_STREAMS=4 HS_DURATION=5 BODY_BYTES=1024 BASE_PORT=18000
#   WORKERS=1 (nginx workers / haproxy threads, per server) PIN=0 (1: load
#   generators on CPU 0, upstream+proxies on CPU 1).
# Every load run is bounded by its own duration flag and by `timeout`.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DURATION=${DURATION:-10}
LAT_DURATION=${LAT_DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-16}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-4}
HS_DURATION=${HS_DURATION:-5}
BODY_BYTES=${BODY_BYTES:-1024}
BASE_PORT=${BASE_PORT:-18000}
WORKERS=${WORKERS:-1}
PIN=${PIN:-0}
HOST=127.0.0.1
TLS=1
OUT_TSV=""

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

EXTRA_NAMES=(); EXTRA_ADDRS=(); EXTRA_TLS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -o) OUT_TSV="$2"; shift 2 ;;
    --no-tls) TLS=0; shift ;;
    *=*)
      name="${1%%=*}"; addr="${1#*=}"; tls=0
      case "$addr" in https://*) tls=1; addr="${addr#https://}" ;; http://*) addr="${addr#http://}" ;; esac
      addr="${addr%/}"
      if ! [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then echo "bad target name: $name" >&2; exit 2; fi
      if ! [[ "$addr" =~ ^(127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|localhost|\[::1\]):[0-9]{1,5}$ ]]; then
        echo "target $name: '$addr' is not host:port on loopback (127.0.0.0/8, localhost, [::1])" >&2; exit 2
      fi
      EXTRA_NAMES+=("$name"); EXTRA_ADDRS+=("$addr"); EXTRA_TLS+=("$tls"); shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for t in nginx haproxy wrk h2load openssl curl ss timeout; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (apt-get install nginx-light haproxy wrk nghttp2-client curl iproute2)" >&2; exit 2; }
done

UP_H1=$((BASE_PORT+80));  UP_H2C=$((BASE_PORT+81))
NG_H1=$((BASE_PORT+180)); NG_H2C=$((BASE_PORT+181)); NG_TLS=$((BASE_PORT+443)); NG_MTLS=$((BASE_PORT+444))
HA_H1=$((BASE_PORT+280)); HA_H2C=$((BASE_PORT+281)); HA_TLS=$((BASE_PORT+543)); HA_MTLS=$((BASE_PORT+544))

LOADGEN=(); SERVERPIN=()
if [ "$PIN" = 1 ]; then LOADGEN=(taskset -c 0); SERVERPIN=(taskset -c 1); fi

TMP="$(mktemp -d /tmp/proxybench.XXXXXX)"
PIDS=()
cleanup() {
  local pid i
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -n "${KEEP_TMP:-}" ] && { log "kept $TMP"; return; }; rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
wait_port() {  # bounded: 10 s
  local i; for i in $(seq 1 100); do port_busy "$1" && return 0; sleep 0.1; done
  log "port $1 did not open"; return 1
}

for p in $UP_H1 $UP_H2C $NG_H1 $NG_H2C $HA_H1 $HA_H2C $NG_TLS $NG_MTLS $HA_TLS $HA_MTLS; do
  if port_busy "$p"; then log "port $p already in use; set BASE_PORT"; exit 2; fi
done

BODY="$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')"
render() {  # render TEMPLATE OUTDIR -> OUTFILE
  local tmpl="$1" dir="$2" out="$3"
  mkdir -p "$dir/tmp"
  sed -e "s|@DIR@|$dir|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@HOST@|$HOST|g" \
      -e "s|@UP_HOST@|$HOST|g" -e "s|@UP_PORT_H1@|$UP_H1|g" -e "s|@BODY@|$BODY|g" \
      -e "s|@PORT_H1@|$4|g" -e "s|@PORT_H2C@|$5|g" -e "s|@PORT_TLS@|${6:-0}|g" -e "s|@PORT_MTLS@|${7:-0}|g" \
      "$tmpl" > "$out"
}

# ---- PKI: CA, server cert (SAN 127.0.0.1/localhost), client cert; EC P-256 ----
mkpki() {
  local d="$TMP/pki"; mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 7 -subj "/CN=bench-ca" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr \
      -subj "/CN=bench-client" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
      -extfile client.ext -out client.crt 2>/dev/null
    cat server.crt server.key > server.pem
  )
}
mkpki

# ---- start servers ----
start_nginx() {  # name template h1 h2c [tls mtls]
  local name="$1" dir="$TMP/$1"
  render "$2" "$dir" "$dir/nginx.conf" "$3" "$4" "${5:-}" "${6:-}"
  "${SERVERPIN[@]}" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
    >"$dir/stdout.log" 2>&1 &
  PIDS+=("$!"); eval "PID_$name=$!"
}
start_nginx upstream "$HERE/upstream/nginx.conf.tmpl" "$UP_H1" "$UP_H2C"
wait_port "$UP_H1"; wait_port "$UP_H2C"
start_nginx nginx "$HERE/conf/nginx-proxy.conf.tmpl" "$NG_H1" "$NG_H2C" "$NG_TLS" "$NG_MTLS"
mkdir -p "$TMP/haproxy"
render "$HERE/conf/haproxy.cfg.tmpl" "$TMP/haproxy" "$TMP/haproxy/haproxy.cfg" "$HA_H1" "$HA_H2C" "$HA_TLS" "$HA_MTLS"
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg"
"${SERVERPIN[@]}" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/stdout.log" 2>&1 &
PIDS+=("$!"); PID_haproxy=$!
for p in $NG_H1 $NG_H2C $HA_H1 $HA_H2C $NG_TLS $NG_MTLS $HA_TLS $HA_MTLS; do wait_port "$p"; done

# ---- sanity: every path answers 200 with the full body ----
check_h1() {  # url [curl opts]
  local url="$1"; shift
  local got; got="$(curl -sS --max-time 5 "$@" -o /dev/null -w '%{http_code} %{size_download}' "$url")" || got="curl-failed"
  if [ "$got" != "200 $BODY_BYTES" ]; then log "sanity check failed for $url: $got"; return 1; fi
}
check_h1 "http://$HOST:$UP_H1/"
check_h1 "http://$HOST:$NG_H1/"
check_h1 "http://$HOST:$HA_H1/"
if [ "$TLS" = 1 ]; then
  check_h1 "https://$HOST:$NG_TLS/" --cacert "$TMP/pki/ca.crt"
  check_h1 "https://$HOST:$HA_TLS/" --cacert "$TMP/pki/ca.crt"
  check_h1 "https://$HOST:$NG_MTLS/" --cacert "$TMP/pki/ca.crt" --cert "$TMP/pki/client.crt" --key "$TMP/pki/client.key"
  check_h1 "https://$HOST:$HA_MTLS/" --cacert "$TMP/pki/ca.crt" --cert "$TMP/pki/client.crt" --key "$TMP/pki/client.key"
  # and mTLS must reject a client without a certificate
  if curl -sS --max-time 5 --cacert "$TMP/pki/ca.crt" -o /dev/null "https://$HOST:$NG_MTLS/" 2>/dev/null \
     && [ "$(curl -s --max-time 5 --cacert "$TMP/pki/ca.crt" -o /dev/null -w '%{http_code}' "https://$HOST:$NG_MTLS/")" = 200 ]; then
    log "nginx mTLS listener accepted a client without certificate"; exit 1
  fi
fi

# ---- measurement helpers; each appends TSV rows to $RES ----
RES="$TMP/results.tsv"
printf 'kind\ttarget\tproto\tconc\trps\tp50_us\tp99_us\terrors\n' > "$RES"

to_us() {  # wrk time string (e.g. 85.00us, 1.20ms, 1.01s) -> integer microseconds
  awk -v v="$1" 'BEGIN{n=v+0; f=1e6; if (v ~ /us$/) f=1; else if (v ~ /ms$/) f=1000; else if (v ~ /m$/) f=6e7;
                       else if (v ~ /h$/) f=3.6e9; printf "%.0f", n*f}'
}

run_wrk() {  # target proto conns duration url
  local target="$1" proto="$2" c="$3" d="$4" url="$5" out rps p50 p99 err
  out="$(timeout $((d + 30)) "${LOADGEN[@]}" wrk -t1 -c"$c" -d"${d}s" --latency "$url" 2>&1)" || true
  printf '%s\n' "$out" > "$TMP/wrk.$target.$proto.c$c.txt"
  rps="$(awk '/^Requests\/sec:/{print $2}' <<<"$out")"
  p50="$(awk '/Latency Distribution/{f=1;next} f && $1=="50%"{print $2; exit}' <<<"$out")"
  p99="$(awk '/Latency Distribution/{f=1;next} f && $1=="99%"{print $2; exit}' <<<"$out")"
  err="$(awk '/Non-2xx or 3xx responses:/{e+=$NF} /Socket errors:/{gsub(/,/,""); e+=$4+$6+$8+$10} END{print e+0}' <<<"$out")"
  if [ -z "$rps" ]; then log "wrk failed for $target $proto: $(tail -3 <<<"$out")"; rps=0; p50=-; p99=-; err=-1
  else p50="$(to_us "$p50")"; p99="$(to_us "$p99")"; fi
  printf 'load\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$proto" "$c" "$rps" "$p50" "$p99" "$err" >> "$RES"
  log "  $target $proto c=$c: ${rps} req/s p50=${p50}us p99=${p99}us errors=${err}"
}

h2_speaks() {  # url -> 0 if one h2 request succeeds (h2c prior knowledge or ALPN h2)
  local out; out="$(timeout 10 h2load -n1 -c1 "$1" 2>&1)" || return 1
  grep -q 'Application protocol: h2' <<<"$out" && grep -q ' 1 succeeded' <<<"$out"
}

run_h2load() {  # target proto duration url
  local target="$1" proto="$2" d="$3" url="$4" out rps p50 p99 err lf
  lf="$TMP/h2load.$target.$proto.log"
  out="$(timeout $((d + WARMUP + 30)) "${LOADGEN[@]}" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$d" \
        --warm-up-time="$WARMUP" --log-file="$lf" "$url" 2>&1)" || true
  printf '%s\n' "$out" > "$TMP/h2load.$target.$proto.txt"
  rps="$(awk '/^finished in/{print $4}' <<<"$out")"
  err="$(awk '/^requests:/{gsub(/,/,""); e+=$10+$12+$14} /^status codes:/{gsub(/,/,""); e+=$7+$9} END{print e+0}' <<<"$out")"
  if [ -z "$rps" ] || [ ! -s "$lf" ]; then log "h2load failed for $target $proto: $(tail -3 <<<"$out")"; rps=0; p50=-; p99=-; err=-1
  else
    read -r p50 p99 < <(cut -f3 "$lf" | sort -n | awk '{v[NR]=$1} END{i50=int(NR*0.50); i99=int(NR*0.99);
        if (i50<1) i50=1; if (i99<1) i99=1; print v[i50], v[i99]}')
  fi
  rm -f "$lf"
  printf 'load\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$proto" "${H2_CONNS}x${H2_STREAMS}" "$rps" "$p50" "$p99" "$err" >> "$RES"
  log "  $target $proto ${H2_CONNS}x${H2_STREAMS}: ${rps} req/s p50=${p50}us p99=${p99}us errors=${err}"
}

run_handshakes() {  # target proto port [client cert]  -> full TLS 1.3 handshakes + 1 GET per connection, sequential
  local target="$1" proto="$2" port="$3" out n secs rate
  local extra=(); [ "${4:-}" = client ] && extra=(-cert "$TMP/pki/client.crt" -key "$TMP/pki/client.key")
  out="$(timeout $((HS_DURATION + 20)) "${LOADGEN[@]}" openssl s_time -connect "$HOST:$port" -new -tls1_3 \
        -time "$HS_DURATION" -www / "${extra[@]}" 2>&1)" || true
  printf '%s\n' "$out" > "$TMP/s_time.$target.$proto.txt"
  read -r n secs < <(awk '/connections in .* real seconds/{print $1, $4; exit}' <<<"$out") || true
  if [ -z "${n:-}" ] || [ "${n:-0}" = 0 ]; then log "s_time failed for $target $proto: $(tail -3 <<<"$out")"; rate=0
  else rate="$(awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.1f", n/s}')"; fi
  printf 'handshake\t%s\t%s\t1\t%s\t-\t-\t0\n' "$target" "$proto" "$rate" >> "$RES"
  log "  $target $proto: ${rate} full handshakes/s (sequential, 1 GET each)"
}

rss_of_pids() {  # pids... -> "rss_kib hwm_kib" summed
  local pid rss=0 hwm=0 r h
  for pid in "$@"; do
    [ -r "/proc/$pid/status" ] || continue
    r="$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")"; h="$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")"
    rss=$((rss + ${r:-0})); hwm=$((hwm + ${h:-0}))
  done
  echo "$rss $hwm"
}
tree_pids() { echo "$1"; ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }
listener_pids() {  # port -> pids listening on it (for extra targets)
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}
record_rss() {  # target pids...
  local target="$1"; shift
  local rh; rh="$(rss_of_pids "$@")"
  printf 'rss\t%s\tVmRSS/VmHWM_KiB\t%s\t%s\t-\t-\t0\n' "$target" "$#" "$rh" | awk -F'\t' -v OFS='\t' '{split($5,a," "); $5=a[1]; $6=a[2]; print}' >> "$RES"
}

bench_plain() {  # target hostport h2c_hostport
  local target="$1" hp="$2" h2hp="$3"
  log "== $target (cleartext)"
  timeout $((WARMUP + 20)) "${LOADGEN[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://$hp/" >/dev/null 2>&1 || true
  run_wrk "$target" h1 "$CONNS" "$DURATION" "http://$hp/"
  run_wrk "$target" h1 1 "$LAT_DURATION" "http://$hp/"
  if [ -n "$h2hp" ] && h2_speaks "http://$h2hp/"; then
    run_h2load "$target" h2c "$DURATION" "http://$h2hp/"
  else
    log "  $target: no h2c, skipped"
  fi
}
bench_tls() {  # target hostport
  local target="$1" hp="$2"
  log "== $target (TLS 1.3, connections reused)"
  timeout $((WARMUP + 20)) "${LOADGEN[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "https://$hp/" >/dev/null 2>&1 || true
  run_wrk "$target" h1+tls "$CONNS" "$DURATION" "https://$hp/"
  run_wrk "$target" h1+tls 1 "$LAT_DURATION" "https://$hp/"
  if h2_speaks "https://$hp/"; then run_h2load "$target" h2+tls "$DURATION" "https://$hp/"
  else log "  $target: no ALPN h2, skipped"; fi
}

# ---- header ----
{
  echo "# proxybench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# host: nproc=$(nproc) cpu='$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)' kernel=$(uname -r)"
  echo "# tools: $(nginx -v 2>&1 | sed 's/.*: //') haproxy/$(haproxy -v | awk 'NR==1{print $3}') wrk/$(wrk -v 2>&1 | awk 'NR==1{print $2}') h2load/$(h2load --version | awk '{print $2}' | sed 's|.*/||') $(openssl version | awk '{print $1"/"$2}')"
  echo "# knobs: DURATION=$DURATION LAT_DURATION=$LAT_DURATION WARMUP=$WARMUP CONNS=$CONNS H2=${H2_CONNS}x${H2_STREAMS} BODY_BYTES=$BODY_BYTES WORKERS=$WORKERS PIN=$PIN"
  echo "# upstream: http://$HOST:$UP_H1/ (h1)  http://$HOST:$UP_H2C/ (h2c)"
} | tee "$TMP/header.txt" >&2

# CPU reference: single-thread sha256 MB/s, taken before and after the loads,
# so runs on a noisy shared host can be compared (this VM shows ~0 steal time
# even when neighbours slow it down).
calib() {  # label
  local v
  v="$(timeout 20 openssl speed -seconds 1 -bytes 16384 -evp sha256 2>/dev/null \
        | awk '/^sha256/{v=$NF; sub(/k$/,"",v); printf "%.0f", v/1000}')"
  printf 'calib\tcpu-sha256-MBps\t%s\t1\t%s\t-\t-\t0\n' "$1" "${v:-0}" >> "$RES"
  log "== CPU reference ($1): sha256 ${v:-?} MB/s single thread"
}

# ---- run ----
calib before
bench_plain direct  "$HOST:$UP_H1" "$HOST:$UP_H2C"
bench_plain nginx   "$HOST:$NG_H1" "$HOST:$NG_H2C"
bench_plain haproxy "$HOST:$HA_H1" "$HOST:$HA_H2C"
for i in "${!EXTRA_NAMES[@]}"; do
  [ "${EXTRA_TLS[$i]}" = 0 ] && bench_plain "${EXTRA_NAMES[$i]}" "${EXTRA_ADDRS[$i]}" "${EXTRA_ADDRS[$i]}"
done
if [ "$TLS" = 1 ]; then
  bench_tls nginx   "$HOST:$NG_TLS"
  bench_tls haproxy "$HOST:$HA_TLS"
  for i in "${!EXTRA_NAMES[@]}"; do
    [ "${EXTRA_TLS[$i]}" = 1 ] && bench_tls "${EXTRA_NAMES[$i]}" "${EXTRA_ADDRS[$i]}"
  done
  log "== full-handshake rate (TLS 1.3 vs mTLS), openssl s_time -new, one connection at a time"
  run_handshakes nginx   tls  "$NG_TLS"
  run_handshakes nginx   mtls "$NG_MTLS" client
  run_handshakes haproxy tls  "$HA_TLS"
  run_handshakes haproxy mtls "$HA_MTLS" client
fi

calib after

# RSS after all load
record_rss upstream $(tree_pids "$PID_upstream")
record_rss nginx $(tree_pids "$PID_nginx")
record_rss haproxy "$PID_haproxy"
for i in "${!EXTRA_NAMES[@]}"; do
  port="${EXTRA_ADDRS[$i]##*:}"
  # shellcheck disable=SC2046
  record_rss "${EXTRA_NAMES[$i]}" $(listener_pids "$port")
done

if grep -qiE 'emerg|alert|crit' "$TMP"/nginx/error.log "$TMP"/upstream/error.log 2>/dev/null; then
  log "WARNING: nginx logged errors:"; grep -hiE 'emerg|alert|crit' "$TMP"/nginx/error.log "$TMP"/upstream/error.log | tail -5 >&2
fi

if [ -n "$OUT_TSV" ]; then { cat "$TMP/header.txt"; cat "$RES"; } > "$OUT_TSV"; log "raw results: $OUT_TSV"; fi
echo
"$HERE/summarize.sh" "$RES"
