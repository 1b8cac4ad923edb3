#!/usr/bin/env bash
# summarize.sh - turn one or more peers.sh result TSVs into markdown tables.
# With several files (runs), every number is the median over runs and the
# `spread` column gives (max-min)/median of req/s across runs.
# Usage: bench/peers/summarize.sh results/run1.tsv [results/run2.tsv ...]
set -euo pipefail
export LC_ALL=C
[ $# -ge 1 ] || { sed -n '2,5p' "$0"; exit 2; }

awk -F'\t' '
function median(s,   n, a, i, j, t) {
  n = split(s, a, " ")
  for (i = 2; i <= n; i++) { t = a[i] + 0; j = i - 1; while (j >= 1 && a[j] + 0 > t) { a[j+1] = a[j]; j-- } a[j+1] = t }
  if (n == 0) return "-"
  if (n % 2) return a[(n+1)/2] + 0
  return (a[n/2] + a[n/2+1]) / 2
}
function minmax(s,   n, a, i, lo, hi) {
  n = split(s, a, " "); lo = hi = a[1] + 0
  for (i = 2; i <= n; i++) { if (a[i] + 0 < lo) lo = a[i] + 0; if (a[i] + 0 > hi) hi = a[i] + 0 }
  return lo " " hi
}
function add(arr, k, v) { arr[k] = (k in arr) ? arr[k] " " v : v }
/^#/ || $1 == "kind" || NF < 8 { next }
{
  k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4
  if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
  add(RPS, k, $5); if ($6 != "-") add(P50, k, $6); if ($7 != "-") add(P99, k, $7)
  add(ERR, k, $8); runs[k]++
  if ($1 == "load") { if (!($2 in tseen)) { tseen[$2] = 1; tord[++nt] = $2 } }
}
END {
  for (i = 1; i <= nk; i++) {
    split(order[i], f, SUBSEP)
    if (f[1] == "load") { med[f[2], f[3], f[4]] = median(RPS[order[i]]) }
  }
  print "| target | proto | conc | req/s | p50 (us) | p99 (us) | x direct | x own cleartext | runs | req/s spread | errors |"
  print "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  # group rows: proto/conc blocks in first-seen order, targets in first-seen order
  nb = 0
  for (i = 1; i <= nk; i++) { split(order[i], f, SUBSEP); if (f[1] != "load") continue
    b = f[3] SUBSEP f[4]; if (!(b in bseen)) { bseen[b] = 1; bord[++nb] = b } }
  for (bi = 1; bi <= nb; bi++) {
    split(bord[bi], g, SUBSEP); proto = g[1]; conc = g[2]
    for (ti = 1; ti <= nt; ti++) {
      t = tord[ti]; k = "load" SUBSEP t SUBSEP proto SUBSEP conc
      if (!(k in seen)) continue
      r = med[t, proto, conc]
      base = proto; if (proto == "h1+tls") base = "h1"; if (proto == "h2+tls") base = "h2c"
      d = med["direct", base, conc]; xd = (d > 0) ? sprintf("%.2f", r / d) : "-"
      xc = "-"; if (base != proto) { c = med[t, base, conc]; if (c > 0) xc = sprintf("%.2f", r / c) }
      split(minmax(RPS[k]), mm, " "); sp = (runs[k] > 1 && r > 0) ? sprintf("%.1f%%", 100 * (mm[2] - mm[1]) / r) : "-"
      split(minmax(ERR[k]), em, " ")
      printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %d | %s | %s |\n", t, proto, conc, r,
        (k in P50) ? median(P50[k]) : "-", (k in P99) ? median(P99[k]) : "-", xd, xc, runs[k], sp, em[2]
    }
  }
  hs = 0
  for (i = 1; i <= nk; i++) { split(order[i], f, SUBSEP); if (f[1] == "handshake") { hs = 1; H[f[2], f[3]] = median(RPS[order[i]]); if (!(f[2] in hseen)) { hseen[f[2]] = 1; hord[++nh] = f[2] } } }
  if (hs) {
    print ""
    print "| target | TLS 1.3 full handshakes/s | mTLS full handshakes/s | mTLS / TLS |"
    print "|---|---:|---:|---:|"
    for (i = 1; i <= nh; i++) { t = hord[i]; a = H[t, "tls"]; m = H[t, "mtls"]
      printf "| %s | %.0f | %.0f | %s |\n", t, a, m, (a > 0) ? sprintf("%.2f", m / a) : "-" }
  }
  cb = 0
  for (i = 1; i <= nk; i++) { split(order[i], f, SUBSEP); if (f[1] != "calib") continue
    if (!cb) { print ""; print "| CPU reference (single-thread openssl sha256) | MB/s (median) | min | max |"; print "|---|---:|---:|---:|"; cb = 1 }
    split(minmax(RPS[order[i]]), mm, " ")
    printf "| %s | %.0f | %.0f | %.0f |\n", f[3], median(RPS[order[i]]), mm[1], mm[2] }
  rs = 0
  for (i = 1; i <= nk; i++) { split(order[i], f, SUBSEP); if (f[1] != "rss") continue
    if (!rs) { print ""; print "| process (after all load) | procs | VmRSS (MiB) | VmHWM (MiB) |"; print "|---|---:|---:|---:|"; rs = 1 }
    printf "| %s | %s | %.1f | %.1f |\n", f[2], f[4], median(RPS[order[i]]) / 1024, median(P50[order[i]]) / 1024 }
}' "$@"
