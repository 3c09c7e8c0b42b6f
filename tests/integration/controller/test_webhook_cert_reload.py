#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Certificate rotation: swap the files under a running server and see the new certificate in
the TLS handshake (openssl s_client); a key that does not match is refused and the old pair
kept."""
import json
import os
import select
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import Curl, Pki, Server, check, fail, load, metric, parse_args  # noqa: E402
from kvsc_harness import workdir  # noqa: E402
from kvsc_harness import wait_ready  # noqa: E402


def served_fingerprint(args, pki, addr):
    host, port = addr.rsplit(":", 1)
    r = subprocess.run([args.openssl, "s_client", "-connect", "%s:%s" % (host, port),
                        "-servername", "localhost", "-CAfile", pki.ca_crt],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return pki.fingerprint(r.stdout)


def file_fingerprint(pki, path):
    with open(path) as f:
        return pki.fingerprint(f.read())


def install(src, dst):
    """Replace dst atomically, as kubelet's atomic writer does for Secret volumes."""
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.rename(tmp, dst)


def wait_for(what, fn, deadline_s=20):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        select.select([], [], [], 0.1)
    fail("timed out waiting for %s (last %r)" % (what, last))


def main():
    args = parse_args()
    work = workdir("kvsc-reload-")
    pki = Pki(args.openssl, work)
    a_crt, a_key = pki.leaf("cert-a")
    b_crt, b_key = pki.leaf("cert-b")
    c_crt, _ = pki.leaf("cert-c")
    live_crt = os.path.join(work, "tls.crt")
    live_key = os.path.join(work, "tls.key")
    shutil.copyfile(a_crt, live_crt)
    shutil.copyfile(a_key, live_key)
    fa, fb, fc = (file_fingerprint(pki, p) for p in (a_crt, b_crt, c_crt))
    check(fa and fb and fc and len({fa, fb, fc}) == 3, "three distinct certificates")

    curl = Curl(args.curl, pki.ca_crt)
    srv = Server(args.controller, live_crt, live_key, "--reload-interval", "1")
    try:
        wait_ready(curl, srv.base)
        check(served_fingerprint(args, pki, srv.addr) == fa, "serves cert A at start")

        # A certificate whose key is not there yet (cert C with key A): refused, A kept.
        install(c_crt, live_crt)
        wait_for("the refused reload to be counted", lambda: metric(
            curl.call(srv.base + "/metrics")[1],
            'kvshare_webhook_cert_reloads_total{result="failed"}') >= 1)
        check(served_fingerprint(args, pki, srv.addr) == fa, "mismatched pair refused: still A")

        # The full rotation: key first, then cert, like two Secret keys landing.
        install(b_key, live_key)
        install(b_crt, live_crt)
        wait_for("cert B in the handshake",
                 lambda: served_fingerprint(args, pki, srv.addr) == fb)
        _, m = curl.call(srv.base + "/metrics")
        check(metric(m, 'kvshare_webhook_cert_reloads_total{result="ok"}') >= 1, "reload counted")

        # Still a working webhook, on the same port.
        doc = load(args.fixtures, "pod-optin.json")
        code, body = curl.post_json(srv.base + "/mutate", json.dumps(doc).encode())
        check(code == 200 and json.loads(body)["response"]["uid"] == doc["request"]["uid"],
              "review after reload: %d %s" % (code, body))
        rc = srv.stop()
        check(rc == 0, "clean exit, got %d: %s" % (rc, srv.stderr()))
        check("Sanitizer" not in srv.stderr(), "no sanitizer reports: " + srv.stderr())
    finally:
        srv.cleanup()
    print("ok: certificate reload")


if __name__ == "__main__":
    main()
