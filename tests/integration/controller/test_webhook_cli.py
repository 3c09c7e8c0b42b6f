#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""kvshare-controller's command line: --help, usage errors, start-up failures, exit codes."""
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import Pki, check, parse_args  # noqa: E402
from kvsc_harness import workdir  # noqa: E402


def run(binary, *argv):
    return subprocess.run([binary, *argv], capture_output=True, text=True, timeout=30)


def main():
    args = parse_args()
    work = workdir("kvsc-cli-")
    pki = Pki(args.openssl, work)
    crt, key = pki.leaf("cli")
    other_crt, _ = pki.leaf("other")
    b = args.controller

    r = run(b, "--help")
    check(r.returncode == 0, "--help exits 0")
    for word in ("--listen", "--tls-cert", "--tls-key", "--image", "--listen-port",
                 "--no-reconcile", "--threads", "--reload-interval", "--verbose", "--version",
                 "/mutate", "/healthz", "/readyz", "/metrics", "SIGTERM"):
        check(word in r.stdout, "--help documents %s" % word)
    r = run(b, "--version")
    check(r.returncode == 0 and r.stdout.startswith("kvshare-controller "), "--version")

    tls = ["--tls-cert", crt, "--tls-key", key]
    r = run(b, "--listen", "127.0.0.1:0", *tls)
    check(r.returncode == 2 and "reconciler" in r.stderr and "--no-reconcile" in r.stderr,
          "without --no-reconcile: exit 2 naming the missing reconciler: %r" % (r,))
    usage = [
        (["--no-reconcile"], "--tls-cert"),
        (["--no-reconcile", "--tls-cert", crt], "--tls-key"),
        (["--no-reconcile", *tls, "--listen-port", "0"], "--listen-port"),
        (["--no-reconcile", *tls, "--listen-port", "70000"], "--listen-port"),
        (["--no-reconcile", *tls, "--listen-port", "12x"], "--listen-port"),
        (["--no-reconcile", *tls, "--threads", "-1"], "--threads"),
        (["--no-reconcile", *tls, "--reload-interval", "0"], "--reload-interval"),
        (["--no-reconcile", *tls, "--image", ""], "--image"),
        (["--no-reconcile", *tls, "--bogus"], "bogus"),
        (["--no-reconcile", *tls, "stray"], "stray"),
        # The port is range-checked, not taken modulo 65536 (99999 once bound 34463).
        (["--no-reconcile", *tls, "--listen", "127.0.0.1:99999"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "127.0.0.1:65536"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "[::1]:99999"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "127.0.0.1:-1"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "127.0.0.1:"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "127.0.0.1:notaport"], "--listen"),
        (["--no-reconcile", *tls, "--listen", "nonsense"], "ADDR:PORT"),
    ]
    for argv, needle in usage:
        r = run(b, *argv)
        check(r.returncode == 2 and needle in r.stderr,
              "%s: exit 2 naming %s, got %d %r" % (argv, needle, r.returncode, r.stderr))

    missing = os.path.join(work, "missing.crt")
    runtime = [
        (["--tls-cert", missing, "--tls-key", key], "missing.crt"),
        (["--tls-cert", other_crt, "--tls-key", key], "not a matching"),
        (["--tls-cert", key, "--tls-key", key], "not a matching"),
    ]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    runtime.append((["--listen", "127.0.0.1:%d" % busy.getsockname()[1], *tls], "listen on"))
    for argv, needle in runtime:
        r = run(b, "--no-reconcile", *argv)
        check(r.returncode == 1 and needle in r.stderr,
              "%s: exit 1 naming %s, got %d %r" % (argv, needle, r.returncode, r.stderr))
        check("Sanitizer" not in r.stderr, "no sanitizer report: " + r.stderr)
    busy.close()
    print("ok: command line")


if __name__ == "__main__":
    main()
