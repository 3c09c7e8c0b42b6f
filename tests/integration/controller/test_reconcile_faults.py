#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The reconciler under faults: 410 Gone on a watch (HTTP status and ERROR event) makes it
relist and keep converging; 500s make it back off and recover; --namespace limits it;
SIGTERM exits at once and cleanly; start-up errors exit with the documented status."""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import Pki, check, fail  # noqa: E402
from kvsc_harness import workdir  # noqa: E402
from kube_fake import Controller, FakeKube, wait_for  # noqa: E402

NS = "ml"
RESTARTS = 'kvshare_reconciler_watch_restarts_total{resource="%s",reason="%s"}'
RESOURCES = ("kvcachepools", "deployments", "services")


def replicas(fake, ns, name):
    d = fake.get("deployments", ns, name + "-cache")
    return d["spec"]["replicas"] if d else None


def scale(fake, ns, name, n):
    fake.update("kvcachepools", ns, name, lambda o: o["spec"].__setitem__("replicas", n))
    wait_for("%s/%s at %d replicas" % (ns, name, n), lambda: replicas(fake, ns, name) == n)


def faults(fake, ctl):
    fake.create("kvcachepools", NS, {"metadata": {"name": "p"}, "spec": {"totalMemoryGB": 8}})
    wait_for("Deployment", lambda: replicas(fake, NS, "p") == 1)

    # 410 Gone, told both ways: the controller relists and keeps converging.
    for n, mode in ((2, "http"), (3, "event")):
        m0 = ctl.metrics()
        lists0 = len([r for r in fake.requests() if r[1] == "GET" and
                      r[2].endswith("/kvcachepools")])
        fake.expire(mode)
        wait_for("pools watch expired (%s)" % mode, lambda: ctl.metrics()[
            RESTARTS % ("kvcachepools", "expired")] > m0[RESTARTS % ("kvcachepools", "expired")])
        wait_for("relisted (%s)" % mode, lambda: len([
            r for r in fake.requests() if r[1] == "GET" and r[2].endswith("/kvcachepools")]) >
            lists0)
        scale(fake, NS, "p", n)
        # The owned-object watches relist too: the pool's status still follows.
        fake.update("deployments", NS, "p-cache",
                    lambda d, n=n: d.__setitem__("status", {"readyReplicas": n}))
        wait_for("status after 410 (%s)" % mode, lambda n=n: fake.get(
            "kvcachepools", NS, "p").get("status", {}).get("readyReplicas") == n)

    # 500s for a while: back off (few requests, not a hot loop), then recover.
    m0 = ctl.metrics()
    t0 = time.monotonic()
    fake.fail(2.5)
    fake.update("kvcachepools", NS, "p", lambda o: o["spec"].__setitem__("replicas", 5))
    wait_for("failure window over", lambda: time.monotonic() > t0 + 2.5, deadline_s=10)
    failed = [r for r in fake.requests(t0) if r[3] == 500]
    # 4 threads, delays from 0.1 s doubling to the 1 s cap: about 4 * 5 in 2.5 s.
    check(3 <= len(failed) <= 40, "backed off: %d failed requests in 2.5 s" % len(failed))
    wait_for("converged after 500s", lambda: replicas(fake, NS, "p") == 5)
    m = ctl.metrics()
    check(m["kvshare_reconciler_api_errors_total"] > m0["kvshare_reconciler_api_errors_total"],
          "API errors counted")
    check(m[RESTARTS % ("deployments", "error")] > m0[RESTARTS % ("deployments", "error")],
          "watch errors counted")

    # 409 Conflict on apply (a write raced ours): counted, backed off, retried with force.
    m0 = ctl.metrics()
    t0 = time.monotonic()
    fake.fail_apply([409, 409])
    scale(fake, NS, "p", 6)
    applies = wait_for("three applies logged", lambda: (lambda a: a if len(a) >= 3 else None)(
        [r for r in fake.requests(t0, ("PATCH",)) if "/deployments/" in r[2]]))
    check([r[3] for r in applies[:3]] == [409, 409, 200], "409, 409, then applied: %r" % applies)
    check(all(r[5] == "application/apply-patch+yaml" and r[4].get("force") == "true" and
              r[4].get("fieldManager") == "kvshare-controller" for r in applies), "apply shape")
    gaps = [b[0] - a[0] for a, b in zip(applies, applies[1:3])]
    check(all(g >= 0.09 for g in gaps), "backed off between retries: %r" % gaps)
    wait_for("conflicts counted", lambda: ctl.metrics()[
        "kvshare_reconciler_apply_conflicts_total"] >=
        m0["kvshare_reconciler_apply_conflicts_total"] + 2)
    check(ctl.metrics()["kvshare_reconciler_api_errors_total"] >=
          m0["kvshare_reconciler_api_errors_total"] + 2, "409s are API errors too")

    # The server ends watches (timeoutSeconds): the controller resumes from its
    # resourceVersion without relisting, and still sees changes.
    wait_for("a watch closed by the server", lambda: ctl.metrics()[
        RESTARTS % ("kvcachepools", "closed")] >= 1, deadline_s=10)
    scale(fake, NS, "p", 4)

    # A pool in another namespace is not this controller's (--namespace ml).
    fake.create("kvcachepools", "other", {"metadata": {"name": "q"}, "spec": {"totalMemoryGB": 1}})
    scale(fake, NS, "p", 1)
    check(fake.get("deployments", "other", "q-cache") is None, "--namespace limits the watch")
    check(not [r for r in fake.requests() if "/namespaces/other/" in r[2] or
               r[2] in ("/apis/kvshare.io/v1alpha1/kvcachepools", "/apis/apps/v1/deployments")],
          "no request outside --namespace")

    # Bookmarks: every watch asks for them, and a resumed watch starts from the last one. A
    # write no watch sees, then history compacted up to it: a watcher that kept the
    # bookmark's resourceVersion resumes; one that ignored bookmarks would get 410.
    watches = [r for r in fake.requests() if r[1] == "WATCH"]
    check(watches and all(r[4].get("allowWatchBookmarks") == "true" for r in watches),
          "watches ask for bookmarks")
    target = fake.unrelated_write()

    def bookmarked():
        with fake.cond:
            per = {res: max([rv for _, r, rv in fake.bookmarks if r == res] or [0])
                   for res in RESOURCES}
        return per if min(per.values()) >= target else None

    wait_for("a bookmark past %d on every watch" % target, bookmarked, deadline_s=10)
    m0 = ctl.metrics()
    t0 = time.monotonic()
    fake.compact_to(target)

    def resumed():
        ok = {r[2].rsplit("/", 1)[-1] for r in fake.requests(t0, ("WATCH",))
              if r[3] == 200 and int(r[4].get("resourceVersion", "0")) >= target}
        return ok >= set(RESOURCES)

    wait_for("every watch resumed from a bookmark", resumed, deadline_s=10)
    for res in RESOURCES:
        check(ctl.metrics()[RESTARTS % (res, "expired")] == m0[RESTARTS % (res, "expired")],
              "%s: no 410 after resuming from a bookmark" % res)
    check(not [r for r in fake.requests(t0, ("GET",)) if r[2].endswith(RESOURCES)],
          "no relist")


def cli(binary, pki, work, crt, key):
    env = dict(os.environ)
    env.pop("KUBERNETES_SERVICE_HOST", None)

    def run(*argv):
        return subprocess.run([binary, "--listen", "127.0.0.1:0", "--tls-cert", crt,
                               "--tls-key", key, *argv], capture_output=True, text=True,
                              timeout=30, env=env)

    r = run()
    check(r.returncode == 2 and "KUBERNETES_SERVICE_HOST" in r.stderr and
          "--kube-api" in r.stderr and "--no-reconcile" in r.stderr,
          "no API server: exit 2 saying what to pass: %r" % (r,))
    for argv, needle in ((["--kube-api", "ftp://x"], "--kube-api"),
                         (["--kube-api", "https://127.0.0.1:1", "--namespace", "Bad_NS"],
                          "--namespace"),
                         (["--kube-api", "https://127.0.0.1:1", "--backoff-max", "0"],
                          "--backoff-max"),
                         (["--kube-api", "https://127.0.0.1:1", "--resync", "x"], "--resync")):
        r = run(*argv)
        check(r.returncode == 2 and needle in r.stderr, "%s: exit 2 naming %s: %r" %
              (argv, needle, r))
    # http:// would send the bearer token in cleartext: refused unless --insecure-kube-api.
    r = run("--kube-api", "http://127.0.0.1:1")
    check(r.returncode == 2 and "--insecure-kube-api" in r.stderr and "cleartext" in r.stderr,
          "http:// API server: exit 2 naming --insecure-kube-api: %r" % (r,))
    missing = os.path.join(work, "nope")
    for argv, needle in ((["--kube-api", "https://127.0.0.1:1", "--kube-ca", missing],
                          "nope"),
                         (["--kube-api", "https://127.0.0.1:1", "--kube-token-file", missing],
                          "nope")):
        r = run(*argv)
        check(r.returncode == 1 and needle in r.stderr, "%s: exit 1 naming the file: %r" %
              (argv, r))
        check("Sanitizer" not in r.stderr, "no sanitizer report: " + r.stderr)
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    for word in ("--kube-api", "--insecure-kube-api", "--kube-ca", "--kube-token-file", "--namespace", "--backoff-max",
                 "--resync", "--no-reconcile", "KUBERNETES_SERVICE_HOST"):
        check(word in r.stdout, "--help documents " + word)


def insecure(binary, pki, api_crt, api_key, hook_crt, hook_key, token_file):
    """--insecure-kube-api lets a plain http API server through, with a warning line."""
    fake = FakeKube(api_crt, api_key, "tok", tls=False)
    ctl = None
    try:
        check(fake.url.startswith("http://"), "fake serves http: " + fake.url)
        ctl = Controller(binary, hook_crt, hook_key, fake, pki.ca_crt, token_file,
                         "--insecure-kube-api", "--namespace", NS)
        fake.create("kvcachepools", NS, {"metadata": {"name": "h"}, "spec": {"totalMemoryGB": 1}})
        wait_for("Deployment over http", lambda: replicas(fake, NS, "h") == 1)
        err = ctl.stderr()
        check("warning: --insecure-kube-api" in err and "cleartext" in err,
              "warns that the token goes in cleartext: " + err)
        rc = ctl.stop()
        check(rc == 0, "SIGTERM: exit 0, got %r; controller stderr:\n%s" % (rc, ctl.stderr()))
    except AssertionError as e:
        fail("%s\ncontroller stderr:\n%s" % (e, ctl.stderr() if ctl else ""))
    finally:
        if ctl:
            ctl.cleanup()
        fake.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--controller", required=True)
    p.add_argument("--openssl", required=True)
    args = p.parse_args()
    work = workdir("kvsc-recf-")
    pki = Pki(args.openssl, work)
    api_crt, api_key = pki.leaf("apiserver")
    hook_crt, hook_key = pki.leaf("webhook")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write("tok\n")
    cli(args.controller, pki, work, hook_crt, hook_key)
    insecure(args.controller, pki, api_crt, api_key, hook_crt, hook_key, token_file)
    fake = FakeKube(api_crt, api_key, "tok")
    ctl = None
    try:
        ctl = Controller(args.controller, hook_crt, hook_key, fake, pki.ca_crt, token_file,
                         "--backoff-max", "1", "--namespace", NS, "--watch-timeout", "2")
        faults(fake, ctl)
        # SIGTERM while watches are open and idle: out within a couple of seconds, exit 0.
        t0 = time.monotonic()
        rc = ctl.stop()
        took = time.monotonic() - t0
        check(rc == 0, "SIGTERM: exit 0, got %r; controller stderr:\n%s" % (rc, ctl.stderr()))
        check(took < 5, "SIGTERM took %.1f s" % took)
        err = ctl.stderr()
        check("Sanitizer" not in err and "runtime error" not in err, "clean stderr: " + err)
        check("SIGTERM, shutting down" in err, "says why it stops")
    except AssertionError as e:
        fail("%s\ncontroller stderr:\n%s" % (e, ctl.stderr() if ctl else ""))
    finally:
        if ctl:
            ctl.cleanup()
        fake.stop()
    print("ok: reconcile faults")


if __name__ == "__main__":
    main()
