#!/usr/bin/env bash
# Puts the client matrix the last e2e run wrote (build/client-matrix.md)
# into docs/clients.md, between its client-matrix markers: the table is never
# written by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
m=build/client-matrix.md
[[ -s $m ]] || { echo "client-matrix: no $m; run make e2e first" >&2; exit 1; }
awk -v f="$m" '
/<!-- client-matrix:begin -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
/<!-- client-matrix:end -->/   { skip = 0 }
!skip { print }' docs/clients.md >docs/clients.md.tmp
mv docs/clients.md.tmp docs/clients.md
echo "client-matrix: docs/clients.md updated from $m" >&2
