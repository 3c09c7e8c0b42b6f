# SPDX-License-Identifier: Apache-2.0
"""Shared helpers for the controller integration tests: PKI, server process, curl."""
import argparse
import atexit
import base64
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--controller", required=True)
    p.add_argument("--curl", required=True)
    p.add_argument("--openssl", required=True)
    p.add_argument("--fixtures", required=True)
    return p.parse_args()


def workdir(prefix):
    """A new private directory (0700, under $TMPDIR) for one test's files, CA and TLS keys
    included. It is removed when the test exits: normally, through fail() or another
    exception, or on SIGTERM/SIGINT (turned into an exit here). Only SIGKILL leaves it."""
    d = tempfile.TemporaryDirectory(prefix=prefix)
    atexit.register(d.cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    return d.name


def stderr_sink():
    """An unnamed file for a child's stderr (O_TMPFILE: nothing to remove, even after
    SIGKILL). read_sink() reads it through /proc, at its own offset."""
    return tempfile.TemporaryFile(mode="w+")


def read_sink(f):
    if not f.closed:
        f.flush()
        with open("/proc/self/fd/%d" % f.fileno()) as r:
            return r.read()
    return ""


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Pki:
    """A throwaway CA and leaf certificates for 127.0.0.1/localhost, made with the openssl CLI."""

    def __init__(self, openssl, workdir):
        self.openssl = openssl
        self.dir = workdir
        self.ca_key = os.path.join(workdir, "ca.key")
        self.ca_crt = os.path.join(workdir, "ca.crt")
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "1",
                  "-subj", "/CN=kvshare-test-ca")

    def _run(self, *args):
        r = subprocess.run([self.openssl, *args], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "openssl %s: %s" % (" ".join(args[:2]), r.stderr))
        return r.stdout

    def leaf(self, name):
        """Returns (cert_path, key_path) of a new leaf signed by the CA."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".crt")
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
        self._run("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                  "-CAcreateserial", "-out", crt, "-days", "1", "-extfile", ext)
        return crt, key

    def fingerprint(self, pem_text):
        r = subprocess.run([self.openssl, "x509", "-noout", "-fingerprint", "-sha256"],
                           input=pem_text, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None


class Server:
    """kvshare-controller on 127.0.0.1:0; reads the bound port from its stdout."""

    def __init__(self, binary, cert, key, *extra, deadline_s=20):
        self.stderr_f = stderr_sink()
        self.stderr_text = ""
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
             "--no-reconcile", *extra],
            stdout=subprocess.PIPE, stderr=self.stderr_f, text=True)
        end = time.monotonic() + deadline_s
        line = ""
        while time.monotonic() < end:
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if r:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            fail("server did not report its address; stdout=%r stderr=%s" % (line, self.stderr()))
        self.addr = line.split()[-1]
        self.base = "https://" + self.addr

    def stderr(self):
        if not self.stderr_f.closed:
            self.stderr_text = read_sink(self.stderr_f)
        return self.stderr_text

    def stop(self, deadline_s=20):
        """SIGTERM; returns the exit status (the process must go within the deadline)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("server ignored SIGTERM for %d s" % deadline_s)
        self.stderr()
        self.stderr_f.close()
        return rc

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr_f.close()


class Curl:
    def __init__(self, curl, cacert):
        self.curl = curl
        self.cacert = cacert

    def argv(self, url, *extra):
        # -w puts the status on its own last line; --max-time bounds every call.
        return [self.curl, "-sS", "--max-time", "20", "--cacert", self.cacert, "-o", "-",
                "-w", "\n%{http_code}", *extra, url]

    @staticmethod
    def split(out):
        body, _, code = out.rpartition("\n")
        return int(code), body

    def call(self, url, *extra, data=None):
        r = subprocess.run(self.argv(url, *extra), input=data, capture_output=True, timeout=60)
        check(r.returncode == 0, "curl %s: rc=%d %s" % (url, r.returncode, r.stderr.decode()))
        return self.split(r.stdout.decode())

    def post_json(self, url, doc_bytes, content_type="application/json"):
        return self.call(url, "-X", "POST", "-H", "Content-Type: " + content_type,
                         "--data-binary", "@-", data=doc_bytes)


def wait_ready(curl, base, deadline_s=20):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        r = subprocess.run(curl.argv(base + "/readyz"), capture_output=True, timeout=30)
        if r.returncode == 0:
            last = Curl.split(r.stdout.decode())
            if last[0] == 200:
                return
        # Poll again at once: the deadline bounds the loop, readiness is the event.
        select.select([], [], [], 0.05)
    fail("server not ready within %d s (last %r)" % (deadline_s, last))


def decode_patch(resp):
    p = resp["response"].get("patch")
    if p is None:
        return None
    check(resp["response"].get("patchType") == "JSONPatch", "patchType is JSONPatch")
    return json.loads(base64.b64decode(p, validate=True))


def load(fixtures, name):
    with open(os.path.join(fixtures, name)) as f:
        return json.load(f)


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    fail("metric %s missing" % series)
