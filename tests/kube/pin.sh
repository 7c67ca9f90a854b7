#!/usr/bin/env bash
# Pins the Kubernetes control plane the tests build (tests/support/kube.rs): writes go.mod and
# go.sum for a release of k8s.io/kubernetes, e.g. `tests/kube/pin.sh v1.33.13`.
#
# k8s.io/kubernetes is not made to be imported: its go.mod points each k8s.io/* staging module at
# a directory inside its own repository (`=> ./staging/src/k8s.io/api`), which its published
# module leaves out. So a module that requires it must replace each of them with the published
# module of the same release (k8s.io/api v0.33.13 for v1.33.13). This script reads that list from
# the release's own go.mod, so it stays right from one release to the next. etcd is pinned to the
# version the release itself requires.
set -euo pipefail
cd "$(dirname "$0")"
release=${1:?usage: pin.sh vMAJOR.MINOR.PATCH (a k8s.io/kubernetes release)}
staging=v0.${release#v1.}
upstream=$(go mod download -json "k8s.io/kubernetes@$release" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
etcd=$(sed -n 's#^\tgo.etcd.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "$upstream")
{
    echo "// The Kubernetes control plane the tests run (tests/support/kube.rs). Written by pin.sh; do not edit."
    echo "module engine.test/kube-control-plane"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $release"
    echo
    echo "// Each staging module of the release, as published (see pin.sh)."
    echo "replace ("
    sed -n "s#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 $staging#p" "$upstream"
    echo ")"
} > go.mod
rm -f go.sum
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$release" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@$release" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$release" \
    "go.etcd.io/etcd/server/v3@$etcd"
echo "pinned k8s.io/kubernetes $release (staging $staging) and etcd $etcd"
