#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The KVCachePool reconciler against a fake API server: objects created with the right
shape, replicas followed, status from the Deployment, invalid specs reported, drift undone,
no writes on a no-op, ownership respected, metrics."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import Pki, check, fail  # noqa: E402
from kvsc_harness import workdir  # noqa: E402
from kube_fake import Controller, FakeKube, wait_for  # noqa: E402

NS = "ml"
POOL = {"apiVersion": "kvshare.io/v1alpha1", "kind": "KVCachePool",
        "metadata": {"name": "llama"}, "spec": {"totalMemoryGB": 64, "replicas": 2}}


def env_of(dep):
    return {e["name"]: e.get("value") for e in
            dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def ready_cond(pool):
    for c in (pool or {}).get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--controller", required=True)
    p.add_argument("--openssl", required=True)
    args = p.parse_args()
    work = workdir("kvsc-rec-")
    pki = Pki(args.openssl, work)
    api_crt, api_key = pki.leaf("apiserver")
    hook_crt, hook_key = pki.leaf("webhook")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write("s3cret-token\n")
    fake = FakeKube(api_crt, api_key, "s3cret-token")
    ctl = None
    try:
        ctl = Controller(args.controller, hook_crt, hook_key, fake, pki.ca_crt, token_file,
                         "--backoff-max", "1")
        run(fake, ctl)
        auth(fake, ctl)
        rc = ctl.stop()
        check(rc == 0, "SIGTERM: exit 0, got %r; controller stderr:\n%s" % (rc, ctl.stderr()))
        err = ctl.stderr()
        check("Sanitizer" not in err and "runtime error" not in err, "clean stderr: " + err)
    except AssertionError as e:
        fail("%s\ncontroller stderr:\n%s" % (e, ctl.stderr() if ctl else ""))
    finally:
        if ctl:
            ctl.cleanup()
        fake.stop()
    print("ok: reconcile")


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures",
                        "admission")


def review(ctl, pool, ns=NS):
    """POST the captured opt-in pod, annotated kvshare.io/pool=pool in ns, to /mutate; returns
    (pod after the patch, warnings)."""
    import base64
    import json
    import ssl
    import urllib.request
    import jsonpatch
    with open(os.path.join(FIXTURES, "pod-optin.json")) as f:
        doc = json.load(f)
    doc["request"]["namespace"] = ns
    pod = doc["request"]["object"]
    pod["metadata"]["namespace"] = ns
    pod["metadata"]["annotations"]["kvshare.io/pool"] = pool
    req = urllib.request.Request(ctl.base + "/mutate", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=ctl.ca)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        resp = json.loads(r.read())["response"]
    patch = json.loads(base64.b64decode(resp["patch"]))
    return jsonpatch.apply_patch(pod, patch), resp.get("warnings", [])


def auth(fake, ctl):
    """spec.authSecretRef: the cache nodes mount the Secret, the webhook wires the same Secret
    into the pool's pods; a pool without it runs open, says so, and so do its pods."""
    get = fake.get
    fake.create("kvcachepools", NS, {"metadata": {"name": "secure"}, "spec": {
        "totalMemoryGB": 8, "authSecretRef": {"name": "secure-auth", "key": "tok"}}})
    dep = wait_for("Deployment secure-cache", lambda: get("deployments", NS, "secure-cache"))
    pspec = dep["spec"]["template"]["spec"]
    vols = [v for v in pspec.get("volumes", []) if "secret" in v]
    check(len(vols) == 1 and vols[0]["secret"] == {"secretName": "secure-auth",
                                                   "defaultMode": 0o440},
          "the node mounts the Secret with mode 0440: %r" % vols)
    mounts = [m for m in pspec["containers"][0]["volumeMounts"] if m["name"] == vols[0]["name"]]
    check(mounts and mounts[0]["readOnly"] is True, "mounted read-only: %r" % mounts)
    env = env_of(dep)
    check(env.get("KVSHARE_AUTH_TOKEN_FILE") == mounts[0]["mountPath"] + "/tok" and
          "KVSHARE_AUTH" not in env, "token file is the key's path, never open: %r" % env)
    wait_for("Authenticated=True", lambda: [c for c in get("kvcachepools", NS, "secure").get(
        "status", {}).get("conditions", []) if c["type"] == "Authenticated" and
        c["status"] == "True" and c["reason"] == "SecretRef"])

    # A pool without authSecretRef: open nodes, a False condition, a warning.
    fake.create("kvcachepools", NS, {"metadata": {"name": "plain"}, "spec": {"totalMemoryGB": 8}})
    dep = wait_for("Deployment plain-cache", lambda: get("deployments", NS, "plain-cache"))
    check(env_of(dep).get("KVSHARE_AUTH") == "none" and "volumes" not in dep["spec"]["template"][
        "spec"], "an open pool's nodes get KVSHARE_AUTH=none and no Secret")
    wait_for("Authenticated=False", lambda: [c for c in get("kvcachepools", NS, "plain").get(
        "status", {}).get("conditions", []) if c["type"] == "Authenticated" and
        c["status"] == "False" and c["reason"] == "AuthDisabled"])
    check("warning: KVCachePool ml/plain has no spec.authSecretRef" in ctl.stderr(),
          "the open pool is logged as a warning")

    # The webhook wires the same Secret into the pool's pods.
    pod, warnings = review(ctl, "secure")
    vols = [v for v in pod["spec"]["volumes"] if v["name"] == "kvshare-auth"]
    check([v["secret"] for v in vols] == [{"secretName": "secure-auth", "defaultMode": 0o440}],
          "pod mounts the pool's Secret: %r" % vols)
    for c in pod["spec"]["containers"]:
        e = {x["name"]: x.get("value") for x in c["env"]}
        check(e.get("KVSHARE_AUTH_TOKEN_FILE") == env["KVSHARE_AUTH_TOKEN_FILE"] and
              "KVSHARE_AUTH" not in e, "the pod reads the token where the nodes do: %r" % e)
    check(pod["metadata"]["annotations"]["kvshare.io/injected-auth"] == "secret:secure-auth/tok",
          "marked with where the token comes from")
    check(warnings == [], "no warning: %r" % warnings)
    # An open pool: KVSHARE_AUTH=none, marked and warned. An unknown pool: no token, marked
    # missing and warned (kvshare in the pod refuses to start), never silently open.
    pod, warnings = review(ctl, "plain")
    check(all({x["name"]: x.get("value") for x in c["env"]}.get("KVSHARE_AUTH") == "none"
              for c in pod["spec"]["containers"]), "open pool: KVSHARE_AUTH=none")
    check(pod["metadata"]["annotations"]["kvshare.io/injected-auth"] == "none" and
          any("KVSHARE_AUTH=none" in w for w in warnings), "open pool: marked and warned")
    for pool, ns in (("nosuch", NS), ("secure", "elsewhere")):
        pod, warnings = review(ctl, pool, ns)
        check(not [v for v in pod["spec"]["volumes"] if v["name"] == "kvshare-auth"],
              "%s/%s: no Secret" % (ns, pool))
        for c in pod["spec"]["containers"]:
            e = {x["name"] for x in c["env"]}
            check(not e & {"KVSHARE_AUTH", "KVSHARE_AUTH_TOKEN_FILE"}, "%s/%s: no auth env: %r"
                  % (ns, pool, e))
        check(pod["metadata"]["annotations"]["kvshare.io/injected-auth"] == "missing" and
              any("not known" in w for w in warnings), "%s/%s: marked missing, warned: %r"
              % (ns, pool, warnings))
    # The pool drops its authSecretRef: the nodes and the webhook follow.
    fake.update("kvcachepools", NS, "secure", lambda o: o["spec"].pop("authSecretRef"))
    wait_for("secure-cache open", lambda: env_of(get("deployments", NS, "secure-cache")).get(
        "KVSHARE_AUTH") == "none")
    wait_for("webhook follows", lambda: review(ctl, "secure")[0]["metadata"]["annotations"][
        "kvshare.io/injected-auth"] == "none")


def run(fake, ctl):
    get = fake.get
    pool = fake.create("kvcachepools", NS, POOL)
    uid = pool["metadata"]["uid"]

    # A pool gets a Deployment and a headless Service, both owned by it.
    dep = wait_for("Deployment llama-cache", lambda: get("deployments", NS, "llama-cache"))
    svc = wait_for("Service llama-cache", lambda: get("services", NS, "llama-cache"))
    for obj in (dep, svc):
        refs = obj["metadata"]["ownerReferences"]
        check(refs == [{"apiVersion": "kvshare.io/v1alpha1", "kind": "KVCachePool",
                        "name": "llama", "uid": uid, "controller": True,
                        "blockOwnerDeletion": True}], "ownerReferences: %r" % refs)
        labels = obj["metadata"]["labels"]
        check(labels["app.kubernetes.io/name"] == "kvshare-cache" and
              labels["kvshare.io/pool"] == "llama", "labels: %r" % labels)
    check(dep["spec"]["replicas"] == 2, "replicas from the spec")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    check(c["image"] == "registry.example/kvshare:test", "image from --image")
    check(c["command"] == ["kvshare"] and c["args"][:2] == ["serve", "--listen"] and
          c["args"][2] == "$(POD_IP):18515" and "--metrics" in c["args"], "args: %r" % c["args"])
    env = env_of(dep)
    check(env["KVSHARE_TOTAL_MEMORY_GB"] == "64" and env["KVSHARE_STRATEGY"] == "lru" and
          env["KVSHARE_REPLICAS"] == "2", "env: %r" % env)
    check(svc["spec"]["clusterIP"] == "None", "headless Service")

    # Created by server-side apply, one PATCH per object, as our field manager.
    applies = wait_for("both applies logged", lambda: (lambda a: a if len(a) >= 2 else None)(
        [r for r in fake.requests() if r[1] == "PATCH" and r[2].endswith("/llama-cache")]))
    for r in applies:
        check(r[5] == "application/apply-patch+yaml" and
              r[4].get("fieldManager") == "kvshare-controller" and r[4].get("force") == "true",
              "apply: content type, fieldManager and force: %r" % (r,))
    check(sorted(r[2] for r in applies if r[3] == 201) ==
          ["/api/v1/namespaces/ml/services/llama-cache",
           "/apis/apps/v1/namespaces/ml/deployments/llama-cache"], "created by apply: %r" %
          applies)
    check(not [r for r in fake.requests() if r[1] in ("POST", "PUT")], "no POST or PUT")
    for obj in (dep, svc):
        mf = obj["metadata"]["managedFields"]
        check([(e["manager"], e["operation"]) for e in mf] == [("kvshare-controller", "Apply")]
              and "f:spec" in mf[0]["fieldsV1"] and "f:ownerReferences" in
              mf[0]["fieldsV1"]["f:metadata"], "managedFields: %r" % mf)
    check(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"],
          "Service selects the Deployment's pods")

    # Status follows the Deployment; Ready False until every node is ready.
    wait_for("status 0/2", lambda: (ready_cond(get("kvcachepools", NS, "llama")) or {})
             .get("reason") == "NodesNotReady")
    fake.update("deployments", NS, "llama-cache",
                lambda d: d.__setitem__("status", {"replicas": 2, "readyReplicas": 1}))
    wait_for("readyReplicas 1", lambda: get("kvcachepools", NS, "llama")
             .get("status", {}).get("readyReplicas") == 1)
    fake.update("deployments", NS, "llama-cache",
                lambda d: d.__setitem__("status", {"replicas": 2, "readyReplicas": 2}))
    wait_for("Ready True", lambda: (ready_cond(get("kvcachepools", NS, "llama")) or {})
             .get("status") == "True")
    pool = get("kvcachepools", NS, "llama")
    check(pool["status"]["readyReplicas"] == 2 and
          pool["status"]["observedGeneration"] == pool["metadata"]["generation"], "status")
    st = [r for r in fake.requests() if r[2].endswith("/status")]
    check(st and all(r[1] == "PATCH" and r[5] == "application/merge-patch+json" and
                     r[4] == {"fieldManager": "kvshare-controller"} for r in st),
          "status: merge patch of the subresource as kvshare-controller: %r" % st)
    check(fake.owners("kvcachepools", NS, "llama", ("status",)) == ["kvshare-controller"],
          "status owned by kvshare-controller")

    # No-op: a reconcile that finds nothing to change writes nothing.
    m0 = ctl.metrics()
    check("kvshare_reconciler_reconciles_total{result=\"ok\"}" in m0,
          "reconciler metrics on /metrics (needs the metrics.c hook)")
    t0 = time.monotonic()
    before = m0['kvshare_reconciler_reconciles_total{result="ok"}']
    fake.update("kvcachepools", NS, "llama",
                lambda o: o["metadata"].setdefault("annotations", {}).__setitem__("touch", "1"))
    wait_for("a reconcile after the touch", lambda: ctl.metrics()[
        'kvshare_reconciler_reconciles_total{result="ok"}'] > before)
    writes = fake.requests(t0, ("POST", "PUT", "PATCH", "DELETE"))
    check(writes == [], "no writes on a no-op reconcile: %r" % writes)

    # Scale: the Deployment follows replicas, and each node learns its share.
    fake.update("kvcachepools", NS, "llama", lambda o: o["spec"].__setitem__("replicas", 3))
    dep = wait_for("replicas 3", lambda: (lambda d: d if d["spec"]["replicas"] == 3 else None)(
        get("deployments", NS, "llama-cache")))
    check(env_of(dep)["KVSHARE_REPLICAS"] == "3", "KVSHARE_REPLICAS follows")
    wait_for("Ready False 2/3", lambda: (ready_cond(get("kvcachepools", NS, "llama")) or {})
             .get("message") == "2 of 3 cache nodes ready")
    fake.update("kvcachepools", NS, "llama", lambda o: o["spec"].__setitem__("strategy", "lfu"))
    wait_for("strategy lfu", lambda: env_of(get("deployments", NS, "llama-cache"))
             .get("KVSHARE_STRATEGY") == "lfu")

    # Drift made by hand is undone; a deleted Deployment comes back.
    # kubectl edit takes spec.replicas (an update owns what it changes); only a forced apply
    # can take it back, so converging proves force=true.
    t0 = time.monotonic()
    fake.update("deployments", NS, "llama-cache", lambda d: d["spec"].__setitem__("replicas", 9),
                manager="kubectl-edit")
    wait_for("replicas back to 3", lambda: get("deployments", NS, "llama-cache")
             ["spec"]["replicas"] == 3)
    check(fake.owners("deployments", NS, "llama-cache", ("spec", "replicas")) ==
          ["kvshare-controller"], "the forced apply took spec.replicas back")
    fix = wait_for("the drift-fixing apply logged", lambda: [
        r for r in fake.requests(t0, ("PATCH",)) if "/deployments/" in r[2]])
    check(fix[0][3] == 200 and fix[0][4].get("force") == "true", "drift undone: %r" % fix)
    # The fake honours conflicts: another manager applying a different value without force.
    code, st = fake.apply("deployments", NS, "llama-cache", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama-cache"},
        "spec": {"replicas": 7}}, "someone-else")
    check(code == 409 and st["reason"] == "Conflict" and
          st["details"]["causes"][0]["field"] == ".spec.replicas" and
          'conflict with "kvshare-controller"' in st["message"], "409 on apply: %r" % st)
    check(get("deployments", NS, "llama-cache")["spec"]["replicas"] == 3, "conflict: no write")
    fake.delete("deployments", NS, "llama-cache")
    wait_for("Deployment recreated", lambda: get("deployments", NS, "llama-cache"))
    fake.delete("services", NS, "llama-cache")
    wait_for("Service recreated", lambda: get("services", NS, "llama-cache"))

    # Invalid specs: Ready False naming the field, and the Deployment is left alone.
    for field, value, reason in (("replicas", -1, "InvalidReplicas"),
                                 ("totalMemoryGB", 0, "InvalidTotalMemoryGB"),
                                 ("strategy", "fifo", "InvalidStrategy")):
        rv = get("deployments", NS, "llama-cache")["metadata"]["resourceVersion"]
        good = get("kvcachepools", NS, "llama")["spec"]
        fake.update("kvcachepools", NS, "llama", lambda o: o["spec"].__setitem__(field, value))
        cond = wait_for(reason, lambda: (lambda c: c if c and c["reason"] == reason else None)(
            ready_cond(get("kvcachepools", NS, "llama"))))
        check(cond["status"] == "False" and "spec." + field in cond["message"],
              "condition names spec.%s: %r" % (field, cond))
        check(get("deployments", NS, "llama-cache")["metadata"]["resourceVersion"] == rv,
              "invalid %s: Deployment untouched" % field)
        fake.update("kvcachepools", NS, "llama", lambda o: o.__setitem__("spec", good))
        wait_for("valid again after %s" % field, lambda: (ready_cond(
            get("kvcachepools", NS, "llama")) or {}).get("reason", "").startswith("Nodes"))
    check(ctl.proc.poll() is None, "still running after invalid specs")

    # A pool with replicas 0 and defaults; another namespace.
    fake.create("kvcachepools", "team-b", {"metadata": {"name": "small"},
                                           "spec": {"totalMemoryGB": 1, "replicas": 0}})
    d = wait_for("team-b Deployment", lambda: get("deployments", "team-b", "small-cache"))
    check(d["spec"]["replicas"] == 0 and env_of(d)["KVSHARE_STRATEGY"] == "lru", "defaults")
    wait_for("scaled to zero is Ready", lambda: (ready_cond(
        get("kvcachepools", "team-b", "small")) or {}).get("status") == "True")

    # Someone else's object with our name is not taken over.
    fake.create("deployments", NS, {
        "metadata": {"name": "other-cache", "labels": {"app.kubernetes.io/name": "kvshare-cache",
                                                      "kvshare.io/pool": "other"}},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"x": "y"}},
                 "template": {"metadata": {"labels": {"x": "y"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    fake.create("kvcachepools", NS, {"metadata": {"name": "other"}, "spec": {"totalMemoryGB": 4}})
    wait_for("DeploymentNotOwned", lambda: (ready_cond(get("kvcachepools", NS, "other")) or {})
             .get("reason") == "DeploymentNotOwned")
    check(get("deployments", NS, "other-cache")["spec"]["replicas"] == 5, "not taken over")

    # Deleting the pool: the garbage collector (ownerReferences) removes its objects, and the
    # controller does not recreate them.
    fake.delete("kvcachepools", NS, "llama")
    check(get("deployments", NS, "llama-cache") is None and get("services", NS, "llama-cache")
          is None, "cascaded")
    # Counters move just after the write they count: poll them too.
    for series, least in (('kvshare_reconciler_writes_total{verb="create"}', 6),
                          ('kvshare_reconciler_writes_total{verb="status"}', 5),
                          ('kvshare_reconciler_reconciles_total{result="invalid"}', 3),
                          ('kvshare_reconciler_reconciles_total{result="not_owned"}', 1)):
        wait_for("%s >= %d" % (series, least), lambda: ctl.metrics()[series] >= least)
    t0 = time.monotonic()
    fake.update("kvcachepools", "team-b", "small", lambda o: o["spec"].__setitem__("replicas", 1))
    wait_for("team-b follows", lambda: get("deployments", "team-b", "small-cache")
             ["spec"]["replicas"] == 1)
    check(get("deployments", NS, "llama-cache") is None, "deleted pool's objects stay gone")
    check(not [r for r in fake.requests(t0) if "llama" in r[2] and r[1] != "GET"],
          "no writes for the deleted pool")


if __name__ == "__main__":
    main()
