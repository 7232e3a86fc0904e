#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (`make test`, called by .ci/run). It first makes sure
# the real parts the tests use are on this machine, installing them with apt-get when it runs as
# root, then checks formatting and vet, then runs every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_pg || need_pkgs+=(postgresql)
# BIND's named for the DNS publishing tests, and dig to check answers like an operator would.
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || need_pkgs+=(bind9)
command -v dig >/dev/null 2>&1 || need_pkgs+=(bind9-dnsutils)
# HAProxy for the end-to-end test of deploy/haproxy.cfg (e2e).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need_pkgs[*]} (needed by the integration tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    # Debian starts a default cluster, named and haproxy on install; the tests run their own.
    if command -v pg_lsclusters >/dev/null 2>&1; then
      pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
    fi
    if command -v service >/dev/null 2>&1; then
      service named stop >/dev/null 2>&1 || true
      service haproxy stop >/dev/null 2>&1 || true
    fi
  else
    echo "test.sh: missing ${need_pkgs[*]}; tests that need them skip (they fail under CI=true)." >&2
    echo "test.sh: install with: sudo apt-get install ${need_pkgs[*]}" >&2
  fi
fi

echo "test.sh: gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...

echo "test.sh: go test -race ./..."
go test -race -count=1 -timeout 45m "$@" ./...
