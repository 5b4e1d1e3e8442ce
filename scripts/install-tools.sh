#!/usr/bin/env bash
# Installs every tool the end-to-end tests and benchmarks use, at pinned
# versions, from the Go module proxy and Debian's archive only. Idempotent:
# a tool already at its pinned version is not rebuilt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${TOOLS_DIR:-$ROOT/build/tools}"
mkdir -p "$TOOLS/bin"

DISTRIBUTION_VERSION=v3.1.2
CRANE_VERSION=v0.22.1
REGCTL_VERSION=v0.11.7
ORAS_VERSION=v1.3.6
STATICCHECK_VERSION=v0.8.2
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
CONTAINERD2_VERSION=v2.4.2
CRICTL_VERSION=v1.37.0
COSIGN_VERSION=v2.6.5

go_tool() { # name module version
  local name=$1 mod=$2 ver=$3 stamp="$TOOLS/bin/.$1.version"
  if [[ -x "$TOOLS/bin/$name" && "$(cat "$stamp" 2>/dev/null)" == "$ver" ]]; then return; fi
  echo "install-tools: $name $ver" >&2
  GOBIN="$TOOLS/bin" CGO_ENABLED=0 go install "$mod@$ver"
  echo "$ver" >"$stamp"
}

go_tool registry github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION"
go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
go_tool regctl github.com/regclient/regclient/cmd/regctl "$REGCTL_VERSION"
go_tool oras oras.land/oras/cmd/oras "$ORAS_VERSION"
go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION"
go_tool cosign github.com/sigstore/cosign/v2/cmd/cosign "$COSIGN_VERSION"

# containerd 2.x with its CRI plugin, and crictl, as a Kubernetes node runs
# them; in their own directory, so that Debian's containerd 1.6 keeps its
# name for the tests that use it.
if [[ ! -x "$TOOLS/containerd2/containerd" || "$(cat "$TOOLS/containerd2/.version" 2>/dev/null)" != "$CONTAINERD2_VERSION $CRICTL_VERSION" ]]; then
  echo "install-tools: containerd $CONTAINERD2_VERSION, crictl $CRICTL_VERSION" >&2
  mkdir -p "$TOOLS/containerd2"
  GOBIN="$TOOLS/containerd2" CGO_ENABLED=0 go install "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD2_VERSION"
  GOBIN="$TOOLS/containerd2" CGO_ENABLED=0 go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  echo "$CONTAINERD2_VERSION $CRICTL_VERSION" >"$TOOLS/containerd2/.version"
fi

# The OCI distribution-spec conformance suite is a Go program; build it from
# the module cache (its own go.mod pins its dependencies).
if [[ ! -x "$TOOLS/bin/conformance" || "$(cat "$TOOLS/bin/.conformance.version" 2>/dev/null)" != "$CONFORMANCE_VERSION" ]]; then
  echo "install-tools: conformance $CONFORMANCE_VERSION" >&2
  mod=github.com/opencontainers/distribution-spec/conformance
  go mod download "$mod@$CONFORMANCE_VERSION"
  dir="$(go mod download -json "$mod@$CONFORMANCE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  (cd "$dir" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$TOOLS/bin/conformance" .)
  echo "$CONFORMANCE_VERSION" >"$TOOLS/bin/.conformance.version"
fi

# Debian packages: skopeo (client), docker.io (a private dockerd for the seed
# scenario), containerd, nginx (benchmark reference), chromium (the status
# page test renders it in a real browser), systemd (systemd-analyze),
# podman and buildah (registries.conf mirror clients), haproxy (the
# cluster example's balancer, beside nginx), prometheus (promtool checks
# examples/prometheus), gnuplot (the cost curve of make bench).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v wrk >/dev/null || need+=(wrk)
command -v skopeo >/dev/null || need+=(skopeo)
command -v dockerd >/dev/null || need+=(docker.io)
command -v containerd >/dev/null || need+=(containerd)
command -v nginx >/dev/null || need+=(nginx-light)
command -v podman >/dev/null || need+=(podman)
command -v haproxy >/dev/null || need+=(haproxy)
command -v buildah >/dev/null || need+=(buildah)
command -v promtool >/dev/null || need+=(prometheus) # promtool checks the alert rules
command -v gnuplot >/dev/null || need+=(gnuplot-nox) # make bench plots the cost curve
if ((${#need[@]})); then
  echo "install-tools: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
echo "install-tools: ok ($TOOLS/bin)" >&2
