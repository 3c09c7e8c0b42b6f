#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""index_redis.py - `kvshare index --redis`: replicas sharing one index through a real
redis-server (started here on a free port in a temp dir, stopped at the end).

Checks: two replicas subscribed to one fake pod both score from Redis; exactly one holds the
pod's writer lease; a third replica with no source loads the snapshot at start and scores;
the writer killed, the other takes the lease and resyncs (a removal made meanwhile shows);
a degraded pod scores zero through Redis and is fresh after AllBlocksCleared; Redis
stopped: scores fall back to the local index, errors are counted, nothing hangs, a replica
started then starts cold, SIGTERM stops every replica cleanly. Then, against a second
redis-server with requirepass and an ACL user: redis://:PASSWORD@ and redis://USER:PASSWORD@
score from Redis, the password can come from KVSHARE_REDIS_PASSWORD, a wrong or missing
password is logged with its cause (WRONGPASS / NOAUTH) and scores fall back to the local
index; scripts go by EVALSHA, and after SCRIPT FLUSH scores still come from Redis (EVAL
fallback, reload) and the writer resyncs what it lost. Then over TLS (rediss://, certificates
made with the openssl CLI; a Redis with tls-auth-clients): a writer with --redis-ca and a client
certificate, a scoring-only replica with the same from KVSHARE_REDIS_* score from Redis; a
replica given the wrong CA falls back locally and logs "certificate verify failed". Skips (77)
without redis-server.

Usage: index_redis.py PATH_TO_KVSHARE
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import index_events as ie  # noqa: E402
from index_events import FakePod, check, keys, as_int, pods_of, wait_for, BLOCK  # noqa: E402


def resp(port, *args, auth=None):
    """One Redis command over RESP; the decoded reply (None when unreachable). auth: the
    AUTH arguments sent first on the same connection."""
    def read(f):
        line = f.readline()
        if not line:
            raise ConnectionError
        t, rest = line[:1], line[1:-2].decode()
        if t == b"+":
            return rest
        if t == b"-":
            return RuntimeError(rest)
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [read(f) for _ in range(n)]
        raise ValueError(line)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            f = s.makefile("rb")
            for cmd in ([["AUTH"] + list(auth)] if auth else []) + [list(args)]:
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in map(str, cmd)))
                rep = read(f)
            return rep
    except (OSError, ConnectionError):
        return None


def main():
    kvshare = sys.argv[1]
    server = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if server is None:
        print("SKIP: redis-server not installed (apt-get install redis-server; scripts/packages.d/index.txt)")
        sys.exit(77)
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    rng = random.Random(seed)
    print(f"index_redis: KVS_TEST_SEED={seed}", flush=True)
    tmp = tempfile.mkdtemp(prefix="kvs-index-redis-")
    procs = []
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        rs = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                               "--save", "", "--appendonly", "no", "--daemonize", "no"],
                              stdout=open(os.path.join(tmp, "redis.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(rs)
        wait_for("redis-server answers PING", lambda: resp(port, "PING"), lambda r: r == "PONG")
        url = f"redis://127.0.0.1:{port}"

        ctx = zmq.Context()
        x = FakePod(ctx, replay=False)
        T = "kv@pod-x@m1"
        seq = [0]

        def pub(events, live=True):
            x.publish(T, seq[0], events, live=live, buffered=False)
            seq[0] += 1

        lease = ["--redis-lease-ms", "600"]
        a = ie.Index(kvshare, [f"tcp://127.0.0.1:{x.port}"], extra=["--redis", url, "--redis-id", "A"] + lease)
        b = ie.Index(kvshare, [f"tcp://127.0.0.1:{x.port}"], extra=["--redis", url, "--redis-id", "B"] + lease)
        procs += [a.proc, b.proc]
        end = time.time() + ie.DEADLINE_S
        while min(a.metric("kvshare_index_pods") or 0, b.metric("kvshare_index_pods") or 0) < 1 \
                and time.time() < end:
            pub([{"type": "AllBlocksCleared"}])
            time.sleep(0.05)
        check(min(a.metric("kvshare_index_pods") or 0, b.metric("kvshare_index_pods") or 0) >= 1,
              "both replicas see the pod")

        prompt = [rng.randint(0, 150000) for _ in range(10 * BLOCK)]
        k = [as_int(d) for d in keys(prompt)]
        pub([{"type": "BlockStored", "block_hashes": k, "parent_block_hash": None, "token_ids": [],
              "block_size": BLOCK, "medium": "GPU"}])
        for name, r in (("A", a), ("B", b)):
            wait_for(f"replica {name} scores 10 blocks", lambda: pods_of(r.score("m1", prompt)),
                     lambda p: p == {"pod-x": 10})
            check((r.metric("kvshare_index_redis_scores_total") or 0) >= 1, f"replica {name} scored from Redis")
        holder = resp(port, "GET", "kvs:l:{m1}@pod-x")
        check(holder in ("A", "B"), f"one replica holds the pod's lease ({holder})")
        check(resp(port, "SCARD", "kvs:p:{m1}@pod-x") == 10, "Redis holds the pod's 10 blocks")

        # A replica with no source: the snapshot warms it; it scores from Redis.
        c = ie.Index(kvshare, [], extra=["--redis", url, "--redis-id", "C"] + lease)
        procs.append(c.proc)
        check(c.metric("kvshare_index_redis_snapshot_copies_total") == 10, "C loaded the 10 copies")
        check(c.metric("kvshare_index_pairs") == 10, "C's own index is warm")
        check(pods_of(c.score("m1", prompt)) == {"pod-x": 10}, "C scores 10 blocks")
        check(pods_of(c.score("m1", prompt, pods=["pod-y"])) == {}, "the pods filter applies in Redis")

        # The writer dies; the other replica takes the lease and resyncs.
        dead, other, oname = (a, b, "B") if holder == "A" else (b, a, "A")
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait()
        pub([{"type": "BlockRemoved", "block_hashes": [k[4]], "medium": "GPU"}])

        def nudge():
            pub([{"type": "BlockRemoved", "block_hashes": [12345], "medium": "GPU"}])
            return pods_of(c.score("m1", prompt))
        wait_for("after failover C sees the removal (prefix 4)", nudge, lambda p: p == {"pod-x": 4})
        check(resp(port, "GET", "kvs:l:{m1}@pod-x") == oname, f"{oname} holds the lease now")
        check((other.metric("kvshare_index_redis_leases_taken_total") or 0) >= 1, f"{oname} took a lease")

        # Degraded through Redis: an unreplayable gap; fresh after AllBlocksCleared.
        pub([{"type": "BlockStored", "block_hashes": k[:2], "block_size": BLOCK}], live=False)
        pub([{"type": "BlockRemoved", "block_hashes": [12345]}])
        wait_for("a degraded pod scores zero on C", lambda: pods_of(c.score("m1", prompt)), lambda p: p == {})
        check(resp(port, "SISMEMBER", "kvs:d:{m1}", "pod-x") == 1, "Redis marks it degraded")
        pub([{"type": "AllBlocksCleared"},
             {"type": "BlockStored", "block_hashes": k[:3], "block_size": BLOCK, "medium": "CPU"}])
        r = wait_for("fresh again: 3 blocks on CPU", lambda: c.score("m1", prompt),
                     lambda r: pods_of(r) == {"pod-x": 3})
        check([p["medium"] for p in r.get("pods", [])] == ["CPU"], f"the tier comes through Redis ({r})")

        # Redis goes away: scores fall back to the local index; errors counted; no hang.
        rs.send_signal(signal.SIGTERM)
        rs.wait(timeout=ie.DEADLINE_S)
        pub([{"type": "BlockStored", "block_hashes": k[3:5], "parent_block_hash": k[2],
              "block_size": BLOCK, "medium": "CPU"}])
        wait_for(f"without Redis {oname} scores locally", lambda: pods_of(other.score("m1", prompt)),
                 lambda p: p == {"pod-x": 5})
        check((other.metric("kvshare_index_redis_fallbacks_total") or 0) >= 1, "fallbacks counted")
        check((other.metric("kvshare_index_redis_errors_total") or 0) >= 1, "Redis errors counted")
        # C has no source: its own index is the snapshot it loaded at start (documented).
        check(pods_of(c.score("m1", prompt)) == {"pod-x": 10}, "C falls back to its start snapshot")
        check(other.request("/healthz")[0] == 200, "healthz still 200")
        # A replica started while Redis is away: starts cold, serves, never hangs.
        d = ie.Index(kvshare, [], extra=["--redis", url, "--redis-id", "D"] + lease)
        procs.append(d.proc)
        code, text = d.request("/v1/score", {"model": "m1", "token_ids": prompt})
        check(code == 404 and "unknown model" in text, f"D: no snapshot, no Redis: 404 ({code} {text})")
        check((d.metric("kvshare_index_redis_errors_total") or 0) >= 1, "D counted the failures")
        for name, r in ((oname, other), ("C", c), ("D", d)):
            rc = r.stop()
            check(rc == 0, f"replica {name} stops cleanly on SIGTERM (exit {rc})")
        auth_and_scripts(kvshare, server, tmp, rng, procs)
        tls(kvshare, server, tmp, rng, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if ie.FAILS:
        print(f"index_redis: {len(ie.FAILS)} failure(s); KVS_TEST_SEED={seed}")
        sys.exit(1)
    print("index_redis: all checks passed")


def auth_and_scripts(kvshare, server, tmp, rng, procs):
    """requirepass and an ACL user; EVALSHA and SCRIPT FLUSH."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pw, auth = "s3cr:t@x", ("s3cr:t@x",)
    rs = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                           "--save", "", "--appendonly", "no", "--daemonize", "no",
                           "--requirepass", pw, "--user", "alice", "on", ">pw2", "~*", "&*", "+@all"],
                          stdout=open(os.path.join(tmp, "redis-auth.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(rs)
    wait_for("redis-server (requirepass) answers PING", lambda: resp(port, "PING", auth=auth),
             lambda r: r == "PONG")
    check(isinstance(resp(port, "PING"), RuntimeError), "this Redis refuses commands without AUTH")
    ctx = zmq.Context()
    x = FakePod(ctx, replay=False)
    T = "kv@pod-z@m2"
    seq = [0]

    def pub(events, live=True):
        x.publish(T, seq[0], events, live=live, buffered=False)
        seq[0] += 1

    src = [f"tcp://127.0.0.1:{x.port}"]
    # The password %-encoded in the URL (':' and '@' are in it).
    enc = pw.replace("%", "%25").replace(":", "%3A").replace("@", "%40")
    e = ie.Index(kvshare, src, extra=["--redis", f"redis://:{enc}@127.0.0.1:{port}/0", "--redis-id", "E"])
    procs.append(e.proc)
    logs = {}
    for name, url in (("wrong", f"redis://:nope@127.0.0.1:{port}"), ("none", f"redis://127.0.0.1:{port}")):
        logs[name] = os.path.join(tmp, f"index-{name}.log")
        r = ie.Index(kvshare, src, extra=["--redis", url, "--redis-id", name],
                     stderr=open(logs[name], "w"))
        procs.append(r.proc)
        logs[name] = (logs[name], r)
    end = time.time() + ie.DEADLINE_S
    while (e.metric("kvshare_index_pods") or 0) < 1 and time.time() < end:
        pub([{"type": "AllBlocksCleared"}])
        time.sleep(0.05)
    prompt = [rng.randint(0, 150000) for _ in range(8 * BLOCK)]
    k = [as_int(d) for d in keys(prompt)]
    pub([{"type": "BlockStored", "block_hashes": k[:6], "parent_block_hash": None, "token_ids": [],
          "block_size": BLOCK, "medium": "GPU"}])
    wait_for("E (password in the URL) scores 6 blocks", lambda: pods_of(e.score("m2", prompt)),
             lambda p: p == {"pod-z": 6})
    check((e.metric("kvshare_index_redis_scores_total") or 0) >= 1, "E scored from Redis")
    check(resp(port, "SCARD", "kvs:p:{m2}@pod-z", auth=auth) == 6, "E wrote the pod's 6 blocks")
    # The ACL user, its password from the environment (kept out of the process list).
    env = dict(os.environ, KVSHARE_REDIS_USER="alice", KVSHARE_REDIS_PASSWORD="pw2")
    old = os.environ.copy()
    os.environ.update(env)
    try:
        f = ie.Index(kvshare, [], extra=["--redis", f"redis://127.0.0.1:{port}", "--redis-id", "F"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    procs.append(f.proc)
    check(f.metric("kvshare_index_redis_snapshot_copies_total") == 6, "F loaded the snapshot")
    wait_for("F (ACL user, password from the environment) scores 6 blocks from Redis",
             lambda: pods_of(f.score("m2", prompt)), lambda p: p == {"pod-z": 6})
    check((f.metric("kvshare_index_redis_scores_total") or 0) >= 1
          and (f.metric("kvshare_index_redis_fallbacks_total") or 0) == 0, "F scored from Redis")
    check(resp(port, "GET", "kvs:l:{m2}@pod-z", auth=auth) == "E", "E holds the lease (the others cannot log in)")
    for name, want in (("wrong", "WRONGPASS"), ("none", "NOAUTH")):
        path, r = logs[name]
        check(pods_of(r.score("m2", prompt)) == {"pod-z": 6}, f"bad credentials ({name}): scores fall back locally")
        check((r.metric("kvshare_index_redis_fallbacks_total") or 0) >= 1, f"{name}: fallbacks counted")
        text = open(path).read()
        check(want in text and ("AUTH" in text or "password" in text),
              f"{name}: the log names the cause ({want}): {text.strip().splitlines()[:2]}")
    # Scores by EVALSHA: the script cache holds the score script.
    cmdstats = resp(port, "INFO", "commandstats", auth=auth) or ""
    check("cmdstat_evalsha:" in cmdstats, "the index sends EVALSHA")
    # SCRIPT FLUSH: scores still come from Redis; the writer's lost writes are resynced.
    check(resp(port, "SCRIPT", "FLUSH", auth=auth) == "OK", "SCRIPT FLUSH")
    before = e.metric("kvshare_index_redis_fallbacks_total") or 0
    check(pods_of(e.score("m2", prompt)) == {"pod-z": 6}, "after SCRIPT FLUSH E still scores")
    check((e.metric("kvshare_index_redis_fallbacks_total") or 0) == before, "... from Redis (EVAL, then reloaded)")
    pub([{"type": "BlockStored", "block_hashes": k[6:8], "parent_block_hash": k[5], "token_ids": [],
          "block_size": BLOCK, "medium": "GPU"}])

    def nudge():
        pub([{"type": "BlockRemoved", "block_hashes": [12345], "medium": "GPU"}])
        return resp(port, "SCARD", "kvs:p:{m2}@pod-z", auth=auth)
    wait_for("the write lost to NOSCRIPT is resynced (8 blocks in Redis)", nudge, lambda n: n == 8)
    wait_for("F scores 8 blocks from Redis", lambda: pods_of(f.score("m2", prompt)),
             lambda p: p == {"pod-z": 8})
    for r in (e, f, logs["wrong"][1], logs["none"][1]):
        check(r.stop() == 0, "a replica stops cleanly on SIGTERM")
    rs.send_signal(signal.SIGTERM)
    rs.wait(timeout=ie.DEADLINE_S)


CERTS_SH = r'''set -e; cd "$1"
k() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key 2>/dev/null; }
ca() { k $1; openssl req -x509 -new -key $1.key -out $1.crt -days 2 -subj /CN=$1; }
leaf() { k $1; openssl req -new -key $1.key -out $1.csr -subj /CN=$1
  printf '%s\n' "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 \
    -extfile $1.ext -out $1.crt 2>/dev/null; }
ca ca; ca other
leaf server ca 'subjectAltName=IP:127.0.0.1,DNS:localhost'
leaf client ca 'extendedKeyUsage=clientAuth'
'''


def tls(kvshare, server, tmp, rng, procs):
    """rediss:// end to end, with a client certificate (tls-auth-clients yes)."""
    if shutil.which("openssl") is None:
        print("index_redis: no openssl CLI, TLS part skipped")
        return
    d = os.path.join(tmp, "tls")
    os.mkdir(d)
    subprocess.run(["sh", "-c", CERTS_SH, "certs", d], check=True)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    port, tport = ports
    rs = subprocess.Popen([server, "--port", str(port), "--tls-port", str(tport), "--bind", "127.0.0.1",
                           "--tls-cert-file", f"{d}/server.crt", "--tls-key-file", f"{d}/server.key",
                           "--tls-ca-cert-file", f"{d}/ca.crt", "--tls-auth-clients", "yes",
                           "--dir", tmp, "--save", "", "--appendonly", "no", "--daemonize", "no"],
                          stdout=open(os.path.join(tmp, "redis-tls.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(rs)
    wait_for("redis-server (TLS) answers PING on its plain port", lambda: resp(port, "PING"),
             lambda r: r == "PONG")
    ctx = zmq.Context()
    x = FakePod(ctx, replay=False)
    T = "kv@pod-t@m3"
    seq = [0]

    def pub(events, live=True):
        x.publish(T, seq[0], events, live=live, buffered=False)
        seq[0] += 1

    url = f"rediss://localhost:{tport}"
    g = ie.Index(kvshare, [f"tcp://127.0.0.1:{x.port}"],
                 extra=["--redis", url, "--redis-id", "G", "--redis-ca", f"{d}/ca.crt",
                        "--redis-cert", f"{d}/client.crt", "--redis-key", f"{d}/client.key"])
    procs.append(g.proc)
    end = time.time() + ie.DEADLINE_S
    while (g.metric("kvshare_index_pods") or 0) < 1 and time.time() < end:
        pub([{"type": "AllBlocksCleared"}])
        time.sleep(0.05)
    prompt = [rng.randint(0, 150000) for _ in range(5 * BLOCK)]
    k = [as_int(h) for h in keys(prompt)]
    pub([{"type": "BlockStored", "block_hashes": k, "parent_block_hash": None, "token_ids": [],
          "block_size": BLOCK, "medium": "GPU"}])
    wait_for("G (rediss://) scores 5 blocks", lambda: pods_of(g.score("m3", prompt)),
             lambda p: p == {"pod-t": 5})
    check((g.metric("kvshare_index_redis_scores_total") or 0) >= 1
          and (g.metric("kvshare_index_redis_errors_total") or 0) == 0, "G scored from Redis over TLS")
    check(resp(port, "SCARD", "kvs:p:{m3}@pod-t") == 5, "G wrote the pod's 5 blocks over TLS")
    old = os.environ.copy()
    os.environ.update(KVSHARE_REDIS_CA_FILE=f"{d}/ca.crt", KVSHARE_REDIS_CERT_FILE=f"{d}/client.crt",
                      KVSHARE_REDIS_KEY_FILE=f"{d}/client.key")
    try:
        h = ie.Index(kvshare, [], extra=["--redis", f"rediss://127.0.0.1:{tport}", "--redis-id", "H"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    procs.append(h.proc)
    check(h.metric("kvshare_index_redis_snapshot_copies_total") == 5, "H loaded the snapshot over TLS")
    check(pods_of(h.score("m3", prompt)) == {"pod-t": 5}
          and (h.metric("kvshare_index_redis_scores_total") or 0) >= 1, "H scores from Redis over TLS")
    log = os.path.join(tmp, "index-wrongca.log")
    w = ie.Index(kvshare, [f"tcp://127.0.0.1:{x.port}"],
                 extra=["--redis", url, "--redis-id", "W", "--redis-ca", f"{d}/other.crt",
                        "--redis-cert", f"{d}/client.crt", "--redis-key", f"{d}/client.key"],
                 stderr=open(log, "w"))
    procs.append(w.proc)
    pub([{"type": "BlockRemoved", "block_hashes": [12345], "medium": "GPU"}])
    wait_for("W (wrong CA) counts Redis errors", lambda: w.metric("kvshare_index_redis_errors_total") or 0,
             lambda n: n >= 1)
    text = open(log).read()
    check("certificate verify failed" in text, f"W: the log names the cause: {text.strip().splitlines()[:1]}")
    for r in (g, h, w):
        check(r.stop() == 0, "a replica stops cleanly on SIGTERM")
    rs.send_signal(signal.SIGTERM)
    rs.wait(timeout=ie.DEADLINE_S)


if __name__ == "__main__":
    main()
