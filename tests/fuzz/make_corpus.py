#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make_corpus.py - writes the fuzz seed corpora: one valid message per type (protocol v4).

Run from the repository root: python3 tests/fuzz/make_corpus.py
The layout follows libkvshare/src/proto_int.h; test_proto.c checks the
encoders against the decoder, so these seeds stay honest."""
import os
import struct

MAGIC, VERSION = 0x4853564B, 4
FROM_SERVER, REGIONS, PULL, VIEW, RANGES, SHM, READERS = 2, 1, 4, 8, 16, 32, 64
SESSION = bytes(range(1, 17))


def msg(mtype, body, flags=0, req_id=1, session=b"\0" * 16):
    return struct.pack("<IHHIIQ", MAGIC, VERSION, mtype, flags, len(body), req_id) + session + body


def region(rid, base, length, rkey):
    return struct.pack("<IQQI", rid, base, length, len(rkey)) + rkey


def block(gen_region, gen_addr, gen, pieces):
    b = struct.pack("<IQQH", gen_region, gen_addr, gen, len(pieces))
    for (r, ln, addr) in pieces:
        b += struct.pack("<IIQ", r, ln, addr)
    return b


nonce, mac, key = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
seeds = {
    "hello": msg(1, struct.pack("<Q", 7) + nonce + struct.pack("<H", 4) + b"node"),
    "challenge": msg(2, nonce + mac + b"\x01", FROM_SERVER),
    "auth": msg(3, mac + struct.pack("<I", 6) + b"addr!!"),
    "hello_ack": msg(4, struct.pack("<I", 4) + b"addr" + struct.pack("<I", 1)
                     + region(1, 0x1000, 4096, b"rkey"), FROM_SERVER | REGIONS, session=SESSION),
    # A same-host offer after the regions: boot id, socket path (KVS_PROTO_FLAG_SHM).
    "hello_ack_shm": msg(4, struct.pack("<I", 4) + b"addr" + struct.pack("<I", 1)
                         + region(1, 0x1000, 4096, b"rkey") + b"\x42" * 16
                         + struct.pack("<H", 22) + b"/tmp/kvshare-1-ab.sock",
                         FROM_SERVER | REGIONS | SHM, session=SESSION),
    "lookup": msg(5, struct.pack("<QII", 7, 100, 2) + key + key, session=SESSION),
    "lookup_reply": msg(6, struct.pack("<iQI", 0, 9, 1) + struct.pack("<I", 1)
                        + region(1, 0x1000, 4096, b"rk") + block(1, 0x1f00, 3, [(1, 128, 0x1000)]),
                        FROM_SERVER | REGIONS, session=SESSION),
    "release": msg(7, struct.pack("<Q", 9), session=SESSION),
    # v4: a RELEASE saying how many readers read these blocks in all.
    "release_readers": msg(7, struct.pack("<QI", 9, 2), READERS, session=SESSION),
    "error": msg(8, struct.pack("<iH", -10, 3) + b"bad", FROM_SERVER, session=SESSION),
    "fetch": msg(9, struct.pack("<QIIH", 9, 0, 2, 2) + struct.pack("<II", 4096, 64), session=SESSION),
    "data": msg(10, struct.pack("<II", 1, 64), FROM_SERVER, session=SESSION),
    "fetch_done": msg(11, struct.pack("<iI", 0, 2) + struct.pack("<QQ", 3, 4), FROM_SERVER,
                      session=SESSION),
    "put": msg(12, struct.pack("<QIH", 7, 1, 2) + struct.pack("<II", 4096, 64) + key, session=SESSION),
    # A pull PUT: after the keys, the client's regions, (region, base, stride) per segment, ids.
    "put_pull": msg(12, struct.pack("<QIH", 7, 1, 2) + struct.pack("<II", 4096, 64) + key
                    + struct.pack("<I", 1) + region(3, 0x10000, 1 << 20, b"rk")
                    + struct.pack("<IQQ", 3, 0x10000, 4096) + struct.pack("<IQQ", 3, 0x90000, 64)
                    + struct.pack("<I", 5), PULL, session=SESSION),
    # v3: a HELLO naming its model, a HELLO_ACK with the server's view
    # (model u64, then dtype, elem, layers, total heads, heads, head dim, TP rank,
    # TP size, block tokens, key tokens, kv layout, kv order as u32), a ranged FETCH
    # (sets of (off, len) ranges, then a set index per block).
    "hello_view": msg(1, struct.pack("<Q", 7) + nonce + struct.pack("<H", 4) + b"node"
                      + struct.pack("<Q", 0x1234), VIEW),
    "hello_ack_view": msg(4, struct.pack("<I", 4) + b"addr"
                          + struct.pack("<Q12I", 0x1234, 0, 2, 2, 4, 2, 64, 1, 2, 32, 16, 1, 0)
                          + struct.pack("<I", 1) + region(1, 0x1000, 4096, b"rkey"),
                          FROM_SERVER | REGIONS | VIEW, session=SESSION),
    "fetch_ranges": msg(9, struct.pack("<QIIH", 9, 0, 3, 2)
                        + struct.pack("<H", 2) + struct.pack("<IIII", 0, 128, 256, 128)
                        + struct.pack("<H", 1) + struct.pack("<II", 512, 64)
                        + struct.pack("<HHH", 0, 1, 0), RANGES, session=SESSION),
    "put_ack": msg(14, struct.pack("<iII", 0, 1, 0), FROM_SERVER, session=SESSION),
    "put_done": msg(15, struct.pack("<iI", 0, 1), FROM_SERVER, session=SESSION),
    # A same-host reader's READ: readers, count, then (entry index u32, serial u64) each.
    "read": msg(16, struct.pack("<II", 2, 2) + struct.pack("<IQ", 7, 1) + struct.pack("<IQ", 9, 4),
                session=SESSION),
}
os.makedirs("tests/fuzz/corpus-fuzz_proto", exist_ok=True)
for name, data in seeds.items():
    with open(f"tests/fuzz/corpus-fuzz_proto/{name}", "wb") as f:
        f.write(data)
# The bootstrap stream: mode byte, then what a client sends before it is trusted.
os.makedirs("tests/fuzz/corpus-fuzz_boot", exist_ok=True)
for mode in (0, 1, 0x40, 0xff):
    with open(f"tests/fuzz/corpus-fuzz_boot/hello-auth-{mode:02x}", "wb") as f:
        f.write(bytes([mode]) + seeds["hello"] + seeds["auth"])
with open("tests/fuzz/corpus-fuzz_boot/auth-first", "wb") as f:
    f.write(b"\x01" + seeds["auth"])
# The same-host handover's answer (fuzz_shm): descriptor count, regions asked for,
# then "KVSM" | n | n x {status i32, kind u32, base, len, off, size u64}
# (kind 1: a memfd, 2: a CUDA VMM allocation; an entry of status != 0 has kind 0).
SHM_MAGIC, MEMFD, CUDA_VMM = 0x4D53564B, 1, 2


def shm_reply(entries):
    nfds = sum(1 for e in entries if e[0] == 0)
    body = struct.pack("<II", SHM_MAGIC, len(entries))
    for e in entries:
        body += struct.pack("<iIQQQQ", *e)
    return bytes([nfds, len(entries)]) + body


os.makedirs("tests/fuzz/corpus-fuzz_shm", exist_ok=True)
shm_seeds = {
    "memfd": shm_reply([(0, MEMFD, 0x7f0000001000, 1 << 20, 4096, (1 << 20) + 4096)]),
    "cuda_vmm": shm_reply([(0, CUDA_VMM, 0x7f8000000000, 1 << 21, 1 << 21, 1 << 22)]),
    "mixed": shm_reply([(0, MEMFD, 0x1000, 4096, 0, 4096), (-3, 0, 0x9000, 64, 0, 0),
                        (0, CUDA_VMM, 0x200000, 65536, 0, 65536)]),
    # The answer to an identify request (same-host direct put reads): no regions.
    "identify": shm_reply([]),
}
# A pool client's offer of its memory (the node parses it): byte 0 is 0x80 + the
# descriptor count (one per entry but withdrawals, kind 3), byte 1 is 0, then "KVSP" | session[16] | mac[32] | n |
# n x {id u32, kind u32, base, len, off, size u64}. Byte 1 of 1: the node's
# answer to an offer of (byte 0 - 0x80) regions, "KVSM" | n | n x status i32.
SHM_OFFER_MAGIC = 0x5053564B
WITHDRAW = 3


def shm_offer(entries):
    body = struct.pack("<I", SHM_OFFER_MAGIC) + bytes(range(16)) + bytes(32)
    body += struct.pack("<I", len(entries))
    for e in entries:
        body += struct.pack("<IIQQQQ", *e)
    fds = sum(1 for e in entries if e[1] != WITHDRAW)
    return bytes([0x80 + fds, 0]) + body


def shm_offer_reply(statuses):
    body = struct.pack("<II", SHM_MAGIC, len(statuses))
    for st in statuses:
        body += struct.pack("<i", st)
    return bytes([0x80 + len(statuses), 1]) + body


shm_seeds["offer"] = shm_offer([(1, MEMFD, 0x7f0000001000, 10 << 20, 4096, (10 << 20) + 4096)])
shm_seeds["offer_two"] = shm_offer([(1, MEMFD, 0x1000, 4096, 0, 4096),
                                    (7, CUDA_VMM, 0x7f0000000000, 1 << 21, 1 << 21, 1 << 22)])
shm_seeds["offer_identify"] = shm_offer([])
shm_seeds["offer_withdraw"] = shm_offer([(3, WITHDRAW, 0, 0, 0, 0),
                                         (8, MEMFD, 0x2000, 4096, 0, 8192)])
shm_seeds["offer_reply"] = shm_offer_reply([0, -3])
shm_seeds["offer_reply_none"] = shm_offer_reply([])
for name, data in shm_seeds.items():
    with open(f"tests/fuzz/corpus-fuzz_shm/{name}", "wb") as f:
        f.write(data)
