#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# netns.sh - two network namespaces joined by a veth pair: a fetch over real TCP between hosts.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for network namespaces"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: iproute2 not installed"; exit 77; }
ns1=kvs-a-$$ ns2=kvs-b-$$
ip netns add "$ns1" 2>/dev/null || { echo "SKIP: cannot create network namespaces here"; exit 77; }
ip netns add "$ns2"
nscleanup() { ip netns del "$ns1" 2>/dev/null; ip netns del "$ns2" 2>/dev/null; cleanup; }
trap nscleanup EXIT
ip link add "va$$" type veth peer name "vb$$"
ip link set "va$$" netns "$ns1"
ip link set "vb$$" netns "$ns2"
ip -n "$ns1" addr add 10.231.0.1/24 dev "va$$"
ip -n "$ns2" addr add 10.231.0.2/24 dev "vb$$"
for n in "$ns1" "$ns2"; do ip -n "$n" link set lo up; done
ip -n "$ns1" link set "va$$" up
ip -n "$ns2" link set "vb$$" up
export UCX_TLS=tcp
PEER_PREFIX=(ip netns exec "$ns1")
start_server srv --listen 10.231.0.1:0 --blocks 256 --segments 2 --block-bytes 65536 --seed 5; a=$ADDR
out=$(KVSHARE_LOG=info ip netns exec "$ns2" "$PEER" fetch --peer "$a" --blocks 256 --segments 2 \
  --block-bytes 65536 --seed 5 2>"$WORK/c.err") || fail "fetch across namespaces: $out"
grep -q 'active-message push' "$WORK/c.err" || fail "expected TCP push: $(cat "$WORK/c.err")"
ok "across a veth pair over TCP: $out"
