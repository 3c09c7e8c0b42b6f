#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The webhook bounds the memory that request bodies hold, across all connections: past
--max-body-memory a review gets 429 with Retry-After and a JSON body naming the flag (sent
before the body when Content-Length is known, after it for a chunked body), and the server
keeps serving. 60 concurrent 3 MiB AdmissionReviews over TLS leave it alive, answering
/healthz, with its peak RSS (VmHWM) bounded; with the default budget the peak stays under
the memory limit of its own manifest (k8s/deploy/deployment.yaml)."""
import copy
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import (Curl, Pki, Server, check, load, metric, parse_args,  # noqa: E402
                          wait_ready)
from kvsc_harness import workdir  # noqa: E402

MIB = 1024 * 1024
CONCURRENT = 60
BUSY = 'kvshare_webhook_requests_total{result="busy"}'


def big_review(fixtures, size):
    """The captured opt-in review, padded with an annotation to size bytes (a valid review:
    the API server's limit is 3 MiB, and so is the webhook's)."""
    doc = load(fixtures, "pod-optin.json")
    body = json.dumps(doc).encode()
    doc = copy.deepcopy(doc)
    doc["request"]["object"]["metadata"]["annotations"]["example.com/blob"] = "x" * (
        size - len(body) - 40)
    body = json.dumps(doc).encode()
    check(size - 64 <= len(body) <= size, "review of %d bytes, want %d" % (len(body), size))
    return body


def post(curl, base, path, chunked=False, expect=True):
    """POST the file at path; returns (status, headers text, body). With expect, curl
    sends "Expect: 100-continue" (it does for big bodies) and waits for the server's
    answer before sending the body, however loaded the machine; without it, the body
    goes at once, as the API server sends it."""
    argv = [curl.curl, "-sS", "--max-time", "60", "--cacert", curl.cacert, "-D", "-",
            "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" + path]
    if chunked:
        argv += ["-H", "Transfer-Encoding: chunked"]
    if expect:
        argv += ["--expect100-timeout", "50"]
    else:
        argv += ["-H", "Expect:"]
    r = subprocess.run(argv + [base + "/mutate"], capture_output=True, timeout=90)
    check(r.returncode == 0, "curl: rc=%d %s" % (r.returncode, r.stderr.decode()))
    out = r.stdout.decode(errors="replace")
    # -D - prints every header block (a "100 Continue" first, maybe); the last one is ours.
    blocks = out.split("\r\n\r\n")
    body = blocks[-1]
    heads = [b for b in blocks[:-1] if b.startswith("HTTP/")]
    head = heads[-1]
    code = int(head.split()[1])
    return code, head, body


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"^%s:\s+(\d+) kB" % field, f.read(), re.M)
    return int(m.group(1))


def manifest_limit_mib(root):
    import yaml
    with open(os.path.join(root, "k8s/deploy/deployment.yaml")) as f:
        dep = yaml.safe_load(f)
    lim = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    check(lim.endswith("Mi"), "limit in Mi: %r" % lim)
    return int(lim[:-2])


def flood(curl, base, path):
    with ThreadPoolExecutor(max_workers=CONCURRENT) as ex:
        # Half wait for "100 Continue", half send their bodies at once: a refused body
        # that is already on its way is read and dropped, so its client gets the 429
        # too, never a reset.
        return list(ex.map(lambda i: post(curl, base, path, expect=i % 2 == 0),
                           range(CONCURRENT)))


def check_busy(code, head, body):
    check(code == 429, "busy: HTTP %d" % code)
    check(re.search(r"^Retry-After: 1\r?$", head, re.M | re.I) is not None,
          "429 carries Retry-After: %r" % head)
    doc = json.loads(body)
    check(doc["code"] == 429 and "--max-body-memory" in doc["error"], "JSON body: %r" % doc)


def main():
    args = parse_args()
    root = os.path.abspath(os.path.join(args.fixtures, "..", "..", ".."))
    work = workdir("kvsc-budget-")
    pki = Pki(args.openssl, work)
    crt, key = pki.leaf("webhook")
    curl = Curl(args.curl, pki.ca_crt)
    small = os.path.join(args.fixtures, "pod-optin.json")
    big = os.path.join(work, "big.json")
    with open(big, "wb") as f:
        f.write(big_review(args.fixtures, 3 * MIB))

    # A 1 MiB budget: a small review passes; a 3 MiB one is refused, with and without
    # Content-Length; the server keeps serving.
    srv = Server(args.controller, crt, key, "--max-body-memory", "1")
    try:
        wait_ready(curl, srv.base)
        code, _, body = post(curl, srv.base, small)
        check(code == 200 and json.loads(body)["response"]["allowed"], "small review: %d" % code)
        check_busy(*post(curl, srv.base, big))
        check_busy(*post(curl, srv.base, big, expect=False))
        check_busy(*post(curl, srv.base, big, chunked=True))
        code, _, _ = post(curl, srv.base, small, chunked=True)
        check(code == 200, "small chunked review: %d" % code)
        check(curl.call(srv.base + "/healthz")[0] == 200, "healthz")
        m = curl.call(srv.base + "/metrics")[1]
        check(metric(m, BUSY) == 3, "three busy answers counted")
        check(srv.stop() == 0, "clean exit")
    finally:
        srv.cleanup()

    # 8 MiB: two full-size reviews at once. 60 concurrent: some 429, some 200, every one
    # answered, healthz still up, and the peak RSS grows by about the budget, not 60 bodies.
    limit_mib = manifest_limit_mib(root)
    # AddressSanitizer keeps freed memory in quarantine and adds shadow memory, so RSS says
    # nothing about the budget there; the functional checks still run.
    with open(args.controller, "rb") as f:
        sanitized = b"__asan_init" in f.read()
    if sanitized:
        print("sanitizer build: RSS bounds not checked")
    for budget in ("8", None):
        extra = ("--max-body-memory", budget) if budget else ()
        srv = Server(args.controller, crt, key, "--threads", "4", *extra)
        try:
            wait_ready(curl, srv.base)
            pid = srv.proc.pid
            rss0 = vm_kib(pid, "VmRSS")
            res = flood(curl, srv.base, big)
            codes = [r[0] for r in res]
            check(set(codes) <= {200, 429}, "only 200 and 429: %r" % sorted(set(codes)))
            for r in res:
                if r[0] == 429:
                    check_busy(*r)
            check(curl.call(srv.base + "/healthz")[0] == 200, "healthz after the flood")
            m = curl.call(srv.base + "/metrics")[1]
            check(metric(m, BUSY) == codes.count(429), "busy counted")
            hwm = vm_kib(pid, "VmHWM")
            print("budget %s MiB: %d x 200, %d x 429; VmRSS at start %d KiB, VmHWM %d KiB" % (
                budget or "default", codes.count(200), codes.count(429), rss0, hwm))
            if budget:
                check(codes.count(429) > 0 and codes.count(200) > 0,
                      "a small budget refuses some and serves some: %r" % codes)
                # The budget, plus what 4 threads reviewing full-size bodies at once hold
                # (parsed tree and patch, about 2x the body each), plus slack for the TLS
                # buffers of 60 connections.
                bound = rss0 + (8 + 4 * 2 * 3 + 16) * 1024
                check(sanitized or hwm < bound, "VmHWM %d KiB < %d KiB" % (hwm, bound))
            elif not sanitized:
                check(hwm < limit_mib * 1024 * 0.9,
                      "default budget: VmHWM %d KiB within 90%% of the manifest's %d Mi"
                      % (hwm, limit_mib))
            check(srv.stop() == 0, "clean exit")
            err = srv.stderr()
            check("Sanitizer" not in err and "runtime error" not in err, "clean stderr: " + err)
        finally:
            srv.cleanup()
    print("ok: webhook body budget")


if __name__ == "__main__":
    main()
