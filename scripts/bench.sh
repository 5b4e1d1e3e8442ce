#!/usr/bin/env bash
# make bench: the hot-path Go benchmarks, then the driver (bench/) that
# starts a real upstream, berth, distribution's proxy and nginx and prints
# the comparison table (also build/bench/bench.json). Extra arguments go to
# the driver, e.g. scripts/bench.sh -repeats 1.
#
# On a machine with two or more CPUs the servers under test run on CPU 0
# and the driver, its clients and the upstream on the others, so that each
# server's CPU time is its own. Expects build/berth and the tools
# (make build tools).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

"$GO" test ./server/ -run '^$' -bench . -skip 'PolicySignatureCost|StatusPagesLarge' -benchtime 1s
# The status pages of a hosted repository of 100,000 images (filled
# through the store API, about 3.5 minutes on 2 cores), each page's time.
"$GO" test ./server/ -run '^$' -bench StatusPagesLarge -benchtime 5x
# What require_signature costs a cold and a warm pull, as ratios against
# the same pulls without a policy (10 images: each iteration is a cold
# pull over an emulated 10 ms, 10 MiB/s link, then 20 warm ones).
"$GO" test ./server/ -run '^$' -bench PolicySignatureCost -benchtime 10x
"$GO" build -o build/bench-driver ./bench

ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
	exec taskset -c "1-$((ncpu - 1))" build/bench-driver -berth "$PWD/build/berth" \
		-tools "$PWD/build/tools/bin" -out "$PWD/build/bench" -server-cpus 0 "$@"
fi
exec build/bench-driver -berth "$PWD/build/berth" -tools "$PWD/build/tools/bin" \
	-out "$PWD/build/bench" -server-cpus "" "$@"
