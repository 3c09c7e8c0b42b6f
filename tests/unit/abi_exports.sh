#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# abi_exports.sh - libkvshare.so exports exactly the kvs_* functions of kvshare.h, under soname .0.
set -eu
lib=$1 header=$2
soname=$(readelf -d "$lib" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libkvshare.so.0" ] || { echo "FAIL: soname is '$soname'"; exit 1; }
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDBR]/ {print $3}' | sed 's/@.*//' | sort -u)
declared=$(grep -E '^KVS_API' "$header" | grep -oE 'kvs_[a-z0-9_]+\(' | tr -d '(' | sort -u)
bad=$(comm -23 <(echo "$exported") <(echo "$declared"))
missing=$(comm -13 <(echo "$exported") <(echo "$declared"))
[ -z "$bad" ] || { echo "FAIL: exported but not in kvshare.h: $bad"; exit 1; }
[ -z "$missing" ] || { echo "FAIL: declared but not exported: $missing"; exit 1; }
echo "ok: $(echo "$exported" | wc -l) kvs_* symbols, soname $soname"
