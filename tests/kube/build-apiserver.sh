#!/usr/bin/env bash
# Builds a real kube-apiserver v1.20.2 (Debian bookworm's `kubernetes` source package, offline,
# with bookworm's Go) and installs etcd 3.4 (Debian's `etcd-server`), for the Kubernetes tests.
# The recipe is ../shared/kube/REAL-APISERVER.md. Built once: the result is cached outside the
# checkout, in $FAAS_KUBE_CACHE (default /var/cache/poorman-faas as root, else
# ~/.cache/poorman-faas). Prints the directory holding bin/kube-apiserver and bin/etcd.
# Needs root (apt-get) for the first build; about 5 minutes on 2 cores.
set -euo pipefail
if [ -n "${FAAS_KUBE_CACHE:-}" ]; then C=$FAAS_KUBE_CACHE
elif [ "$(id -u)" -eq 0 ]; then C=/var/cache/poorman-faas
else C=$HOME/.cache/poorman-faas; fi
W=$C/kube-apiserver-1.20.2
if [ -x "$W/bin/kube-apiserver" ] && [ -x "$W/bin/etcd" ]; then echo "$W"; exit 0; fi
mkdir -p "$W" && cd "$W"
# One build at a time (tests started together on a fresh machine wait for the first).
exec 9>"$C/.build.lock"
flock 9
if [ -x "$W/bin/kube-apiserver" ] && [ -x "$W/bin/etcd" ]; then echo "$W"; exit 0; fi
exec 3>&1 1>"$W/build.log" 2>&1   # the build's output goes to the log, the result to stdout
trap 'echo "kube-apiserver build failed, see $W/build.log" >&2; tail -20 "$W/build.log" >&2' ERR
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
# deb-src entries: the machine's own Debian sources, as source entries.
if ! cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -qE '^(Types:.*deb-src|deb-src )'; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      | $sudo tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
  else
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/^deb /deb-src /' \
      | $sudo tee /etc/apt/sources.list.d/debian-src.list >/dev/null
  fi
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  golang-go etcd-server golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev openssl curl
[ -f kubernetes_1.20.5+really1.20.2.orig.tar.gz ] ||
  apt-get source --download-only -qq kubernetes=1.20.5+really1.20.2-1.1+deb12u1
rm -rf kubernetes-1.20.2 && tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
S=$W/kubernetes-1.20.2
# The vendored reflect2 1.0.1 / json-iterator 1.1.10 crash under Go >= 1.18 (SIGSEGV in mapiter
# when a custom resource is encoded): use Debian's 1.0.2 / 1.1.12 instead.
for p in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "$S/vendor/$p"; cp -aL "/usr/share/gocode/src/$p" "$S/vendor/$p"
  find "$S/vendor/$p" -name '*_test.go' -delete
done
# GOPATH mode: Go 1.19 in module mode refuses the 1.20 go.mod.
export GOPATH=$W/gopath GOCACHE=$W/gocache GOPROXY=off GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
mkdir -p "$GOPATH/src/k8s.io" && ln -sfn "$S" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
# pkg/generated/openapi/zz_generated.openapi.go is not in the tarball: generated as upstream's Makefile does.
go build -o "$W/bin/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
DIRS=$(find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) -type f -name '*.go' \
  | sed 's|^./staging/src|vendor|; s|^./||' | grep -vE '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
  | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u \
  | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$W/bin/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$W/violations.report"
LDF="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
done
go build -trimpath -ldflags "$LDF" -o "$W/bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
cp /usr/bin/etcd "$W/bin/etcd"
mv "$W/bin/kube-apiserver.tmp" "$W/bin/kube-apiserver"
# Only the binaries are kept: the sources and Go's build cache (~1.5 GB) go.
rm -rf "$S" "$W/gopath" "$W/gocache" "$W"/kubernetes_*.tar.* "$W"/kubernetes_*.dsc
echo "$W" >&3
