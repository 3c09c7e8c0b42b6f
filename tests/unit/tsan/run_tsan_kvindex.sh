#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run_tsan_kvindex.sh BUILD_DIR [FILTER] - the index's unit tests (default: the one-writer /
# lock-free-readers stress tests) under ThreadSanitizer. Needs BUILD_DIR's
# libkvshare_static.a (any build type); compiles kvindex.c and the tests with
# -fsanitize=thread and stops at the first report.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
build=$1
filter=${2:-one_writer}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
${CC:-gcc} -O1 -g -fsanitize=thread -std=gnu11 -D_GNU_SOURCE -I"$here" -I"$root/connectors/index" -I"$root/util" \
  -I"$root/libkvshare/include" -I"$root/tests/unit" "$here/driver.c" \
  "$root/connectors/index/kvindex.c" "$root/connectors/index/ixshard.c" "$root/util/ixalloc.c" -o "$out/t" \
  "$build/libkvshare/libkvshare_static.a" -lcrypto -lxxhash -lpthread -lm
TSAN_OPTIONS=halt_on_error=1 "$out/t" "$filter"
