#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# index.sh KVSHARE [SCRIPT [ARGS...]] - `kvshare index` against fake vLLM pods over real ZMQ (SCRIPT,
# default index_events.py, does the work). Skips (77) where Debian's python3-zmq /
# python3-msgpack / python3-cbor2 are missing.
set -u
k=$1
py=/usr/bin/python3
if ! "$py" -c 'import zmq, msgpack, cbor2, xxhash' 2>/dev/null; then
  echo "SKIP: $py lacks zmq, msgpack, cbor2 or xxhash (scripts/packages.d/index.txt, core.txt)"
  exit 77
fi
export PYTHONDONTWRITEBYTECODE=1 # the scripts import each other: no __pycache__ in the tree
script=${2:-index_events.py}
shift $(($# > 1 ? 2 : 1))
exec timeout 240 "$py" "$(dirname "$0")/$script" "$k" "$@"
