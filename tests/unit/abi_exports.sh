#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# abi_exports.sh - libkvshare.so exports exactly the kvs_* functions of kvshare.h, under soname .0,
# and kvshare_dl.h's KVS_DL_FUNCS names exactly those (DL_NAMES prints that list).
# Usage: abi_exports.sh LIB HEADER [DL_NAMES]
set -eu
lib=$1 header=$2 dl_names=${3:-}
soname=$(readelf -d "$lib" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libkvshare.so.0" ] || { echo "FAIL: soname is '$soname'"; exit 1; }
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDBR]/ {print $3}' | sed 's/@.*//' | sort -u)
declared=$(grep -E '^KVS_API' "$header" | grep -oE 'kvs_[a-z0-9_]+\(' | tr -d '(' | sort -u)
bad=$(comm -23 <(echo "$exported") <(echo "$declared"))
missing=$(comm -13 <(echo "$exported") <(echo "$declared"))
[ -z "$bad" ] || { echo "FAIL: exported but not in kvshare.h: $bad"; exit 1; }
[ -z "$missing" ] || { echo "FAIL: declared but not exported: $missing"; exit 1; }
if [ -n "$dl_names" ]; then
  listed=$("$dl_names" "$lib" | sort) || { echo "FAIL: $dl_names could not load $lib"; exit 1; }
  dup=$(uniq -d <<<"$listed")
  [ -z "$dup" ] || { echo "FAIL: listed twice in KVS_DL_FUNCS: $dup"; exit 1; }
  unlisted=$(comm -23 <(echo "$exported") <(echo "$listed"))
  [ -z "$unlisted" ] || { echo "FAIL: exported but not in kvshare_dl.h's KVS_DL_FUNCS: $unlisted"; exit 1; }
  # (Listed but not exported cannot happen: kvs_dl_open would have refused the library.)
fi
echo "ok: $(echo "$exported" | wc -l) kvs_* symbols, soname $soname${dl_names:+, all in KVS_DL_FUNCS}"
