#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# under_shim.sh KVS_SHM SHIM [ASAN_RUNTIME] - the same-host CUDA path in processes that run
# under the LD_PRELOAD shim, as an engine does: the holder's VMM allocation is the engine's
# (tracked), but the reader's import, mapping and copies are libkvshare's own and must reach
# the driver, not the shim's hooks (which would track the holder's memory as the reader's).
set -u
kvs_shm=$1 shim=$2 asan=${3:-}
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvs-shm-shim-XXXXXX")
trap 'rm -rf "$dir"' EXIT
preload=$shim
[ -n "$asan" ] && preload="$asan:$shim"
LD_PRELOAD=$preload KVSHARE_STATS_FILE="$dir/stats.%p" "$kvs_shm" cuda &
pid=$!
wait $pid || { echo "FAIL: kvs_shm cuda under the shim"; exit 1; }
holders=0
for f in "$dir"/stats.*; do
  [ -e "$f" ] || continue
  if [ "$f" = "$dir/stats.$pid" ]; then
    # The reader: nothing of libkvshare's own driver calls reached the hooks.
    if ! grep -q '"vmm_maps":0' "$f" || ! grep -q '"copies_dtoh":0' "$f"; then
      echo "FAIL: the shim tracked the reader's own import/copies:"; cat "$f"; exit 1
    fi
  elif grep -q '"vmm_maps":1' "$f"; then
    holders=$((holders + 1))
  fi
done
[ "$holders" -eq 1 ] || { echo "FAIL: expected the holder's stats (its VMM map tracked), got $holders"; ls "$dir"; exit 1; }
echo "ok: under the shim: the holder's allocation tracked, the reader's import and copies not"
