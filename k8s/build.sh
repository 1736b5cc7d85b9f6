#!/usr/bin/env bash
# Builds the Kubernetes control plane the k8s tests run (etcd, kube-apiserver,
# kube-controller-manager, kwok) from the Go modules pinned in k8s/*/go.mod and go.sum.
# The binaries land in one cache folder named after the versions; binaries already there are
# reused, so a second run costs nothing. Only the Go module proxy is used.
#
#   k8s/build.sh           build what is missing, print the folder
#   k8s/build.sh --dir     print the folder only (nothing is built)
#
# EDGEOFFLOAD_K8S_BIN overrides the folder. Cold build on 2 cores: see deploy/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

pinned() {  # pinned MODULE_DIR MODULE -> the version its go.mod requires (one line or a block)
  awk -v m="$2" '$1 == "require" && $2 == m {print $3; exit} $1 == m {print $2; exit}' "$here/$1/go.mod"
}

k8s_version=$(pinned kubernetes k8s.io/kubernetes)
etcd_version=$(pinned etcd go.etcd.io/etcd/server/v3)
kwok_version=$(pinned kwok sigs.k8s.io/kwok)
bin_dir=${EDGEOFFLOAD_K8S_BIN:-$HOME/.cache/edgeoffload/k8s/kubernetes-$k8s_version-etcd-$etcd_version-kwok-$kwok_version}

if [ "${1:-}" = "--dir" ]; then
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "k8s/build.sh: go is not on PATH (Go >= 1.26 is needed)" >&2; exit 1; }
mkdir -p "$bin_dir"

# Static binaries as upstream ships them; never switch Go toolchains behind the user's back.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

k8s_minor=${k8s_version#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

build() {  # build NAME MODULE_DIR PACKAGE LDFLAGS
  local name=$1 module_dir=$2 package=$3 ldflags=$4
  if [ -x "$bin_dir/$name" ]; then
    echo "k8s/build.sh: $name: reusing $bin_dir/$name"
    return
  fi
  echo "k8s/build.sh: building $name from $package (a cold build takes minutes)"
  local start=$SECONDS
  (cd "$here/$module_dir" && nice -n 10 go build -ldflags "$ldflags" -o "$bin_dir/.$name.tmp" "$package")
  mv "$bin_dir/.$name.tmp" "$bin_dir/$name"
  echo "k8s/build.sh: $name built in $((SECONDS - start)) s"
}

build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w"
echo "$bin_dir"
