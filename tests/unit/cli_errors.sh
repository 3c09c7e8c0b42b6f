#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cli_errors.sh - the kvshare command rejects bad input with a message naming the cause.
set -u
k=$1
fail=0
expect() { # expect EXIT_CODE PATTERN -- args...
  local want=$1 pat=$2; shift 3
  local out rc
  out=$("$k" "$@" 2>&1); rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pat" <<<"$out"; then
    echo "FAIL: kvshare $* -> exit $rc, output: $out (wanted exit $want and /$pat/)"; fail=1
  else
    echo "ok: kvshare $*"
  fi
}
expect 1 "--algo 'md5'" -- keys --algo md5 1 2
expect 1 "--block-tokens '0'" -- keys --block-tokens 0 1 2
expect 1 "TOKEN '4294967296'" -- keys 4294967296
expect 1 "TOKEN '-1'" -- keys -- -1
expect 1 "TOKEN 'abc'" -- keys abc
expect 1 "unknown option '--bogus'" -- keys --bogus
expect 2 "unknown command 'frobnicate'" -- frobnicate
expect 2 "unknown benchmark 'nope'" -- bench nope
expect 2 "--chain 'x': expected an integer" -- bench lookup --chain x
expect 2 "usage: kvshare bench lookup" -- bench lookup --frob
expect 0 "^0 0-1 [0-9]+ [0-9a-f]{64}$" -- keys --block-tokens 2 7 8 9
expect 0 "partial block" -- keys --block-tokens 2 7 8 9
expect 0 "kvshare [0-9]+\.[0-9]+\.[0-9]+" -- version
exit $fail
