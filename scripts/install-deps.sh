#!/usr/bin/env bash
# System packages LogStream needs, installed with apt-get when missing.
#   scripts/install-deps.sh          what the build needs: protoc (the etcd
#                                    client's gRPC code is generated at build
#                                    time; Debian package protobuf-compiler)
#   scripts/install-deps.sh --test   also what the tests start: an etcd
#                                    cluster (etcd-server), network
#                                    namespaces (iproute2) and a FUSE mount
#                                    (bindfs: a SQLite store on a network
#                                    filesystem is refused); openssl makes
#                                    the secure etcd cluster's certificates;
#                                    chromium loads the admin web view
#                                    headless (host/tests/web_view.rs);
#                                    python3-venv holds componentize-py,
#                                    which builds the Python processors;
#                                    node and npm run componentize-js (the
#                                    JavaScript processors)
# Exits non-zero with one sentence when a package is missing and cannot be
# installed here (not root, or no apt-get).
set -euo pipefail

needed=()
command -v protoc >/dev/null 2>&1 || needed+=(protobuf-compiler)
if [[ ${1:-} == --test ]]; then
    command -v etcd >/dev/null 2>&1 || needed+=(etcd-server)
    command -v ip >/dev/null 2>&1 || [[ -x /usr/sbin/ip ]] || needed+=(iproute2)
    command -v bindfs >/dev/null 2>&1 || needed+=(bindfs)
    command -v openssl >/dev/null 2>&1 || needed+=(openssl)
    command -v chromium >/dev/null 2>&1 || needed+=(chromium)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || needed+=(python3-venv)
    command -v node >/dev/null 2>&1 || needed+=(nodejs)
    command -v npm >/dev/null 2>&1 || needed+=(npm)
elif [[ -n ${1:-} ]]; then
    echo "usage: scripts/install-deps.sh [--test]" >&2
    exit 2
fi
((${#needed[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing ${needed[*]}; install them with your package manager (Debian: apt-get install ${needed[*]}), or set PROTOC/ETCD/CHROMIUM to their binaries." >&2
    exit 1
fi
echo "installing ${needed[*]}..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
