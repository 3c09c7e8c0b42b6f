#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The webhook over real TLS: captured reviews in, RFC 6902 patches applied with python3-jsonpatch,
bad input, 64 concurrent clients, metrics, idempotence and SIGTERM."""
import copy
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsc_harness import (SKIP, Curl, Pki, Server, check, decode_patch, fail, load, metric,  # noqa: E402
                          parse_args, wait_ready)
from kvsc_harness import workdir  # noqa: E402

try:
    import jsonpatch
except ImportError:
    print("SKIP: python3-jsonpatch is not installed (apt-get install python3-jsonpatch)")
    sys.exit(SKIP)

IMAGE = "registry.test/kvshare:it"
LISTEN_PORT = 23456


def review(curl, base, doc):
    code, body = curl.post_json(base + "/mutate", json.dumps(doc).encode())
    check(code == 200, "review %s: HTTP %d %s" % (doc["request"]["uid"], code, body))
    resp = json.loads(body)
    check(resp["apiVersion"] == doc["apiVersion"] and resp["kind"] == doc["kind"],
          "envelope echoed")
    check(resp["response"]["uid"] == doc["request"]["uid"], "uid echoed")
    check(resp["response"]["allowed"] is True, "allowed")
    return resp


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def assert_injected(before_review, pod, version):
    """Check the patched pod against what the original review asked for."""
    before = before_review["request"]["object"]
    meta = before.get("metadata", {})
    labels = meta.get("labels", {})
    annots = meta.get("annotations", {})
    ns = before_review["request"].get("namespace") or meta.get("namespace")
    check(pod["metadata"]["annotations"].get("kvshare.io/injected") == version,
          "pod marked with the controller's version")
    for k, v in annots.items():
        check(pod["metadata"]["annotations"][k] == v, "annotation %s kept" % k)
    init = [c for c in pod["spec"]["initContainers"] if c["image"] == IMAGE]
    check(len(init) == 1, "one init container from --image")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    for v in before["spec"].get("volumes", []):
        check(vols.get(v["name"]) == v, "volume %s kept" % v["name"])
    lib_mount = [m for m in init[0]["volumeMounts"]]
    check(len(lib_mount) == 1 and "emptyDir" in vols[lib_mount[0]["name"]],
          "init container writes into an emptyDir")
    lib_vol, lib_path = lib_mount[0]["name"], lib_mount[0]["mountPath"]
    check(lib_path == "/opt/kvshare", "shim volume at /opt/kvshare")
    secret = annots.get("kvshare.io/auth-secret")
    for old, c in zip(before["spec"]["containers"], pod["spec"]["containers"]):
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        check(mounts[lib_vol]["mountPath"] == lib_path, "%s mounts the shim" % c["name"])
        env = env_of(c)
        old_env = env_of(old)
        check(len(env) == len(c["env"]), "%s: no duplicate env names" % c["name"])
        for name, e in old_env.items():
            if name != "LD_PRELOAD":
                check(env[name] == e, "%s: user env %s kept" % (c["name"], name))
        pre = env["LD_PRELOAD"]["value"]
        shim = pre.split(":")[-1]
        check(shim.startswith(lib_path + "/") and shim.endswith(".so"),
              "%s: LD_PRELOAD ends with the shim under the mount: %s" % (c["name"], pre))
        if old_env.get("LD_PRELOAD", {}).get("value"):
            check(pre == old_env["LD_PRELOAD"]["value"] + ":" + shim,
                  "%s: LD_PRELOAD appended with ':'" % c["name"])
        else:
            check(pre == shim, "%s: LD_PRELOAD is the shim alone" % c["name"])
        want_role = labels.get("kvshare.io/role", "both")
        if "KVSHARE_ROLE" not in old_env:
            check(env["KVSHARE_ROLE"]["value"] == want_role, "KVSHARE_ROLE from the label")
        check(env["KVSHARE_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP",
              "pod IP from a fieldRef")
        check(env["KVSHARE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
              "pod name from a fieldRef")
        names = [e["name"] for e in c["env"]]
        check(names.index("KVSHARE_POD_IP") < names.index("KVSHARE_LISTEN"),
              "KVSHARE_POD_IP defined before KVSHARE_LISTEN uses it")
        check(env["KVSHARE_LISTEN"]["value"] == "$(KVSHARE_POD_IP):%d" % LISTEN_PORT,
              "KVSHARE_LISTEN uses --listen-port")
        pool = annots.get("kvshare.io/pool")
        if pool:
            check(env["KVSHARE_POOL"]["value"] == "%s-cache.%s.svc" % (pool, ns), "KVSHARE_POOL")
        else:
            check("KVSHARE_POOL" not in env, "no KVSHARE_POOL without a pool")
        if secret:
            sv = [v for v in pod["spec"]["volumes"]
                  if v.get("secret", {}).get("secretName") == secret]
            check(len(sv) == 1, "auth secret mounted as a volume")
            tok = env["KVSHARE_AUTH_TOKEN_FILE"]["value"]
            check(tok.startswith(mounts[sv[0]["name"]]["mountPath"] + "/"),
                  "token file under the secret mount")
        else:
            # --no-reconcile knows no pool: no token and never KVSHARE_AUTH=none; the pod is
            # marked "missing" (kvshare in it refuses to start) and the review warns.
            check("KVSHARE_AUTH_TOKEN_FILE" not in env, "no token without auth-secret")
            check("KVSHARE_AUTH" not in env, "never silently open")
            check(pod["metadata"]["annotations"]["kvshare.io/injected-auth"] == "missing",
                  "marked kvshare.io/injected-auth: missing")


def patch_and_check(curl, base, doc, version, tag):
    resp = review(curl, base, doc)
    ops = decode_patch(resp)
    check(ops is not None, "%s: a patch" % tag)
    pod = jsonpatch.apply_patch(doc["request"]["object"], ops)
    assert_injected(doc, pod, version)
    # Reinvocation: the patched pod comes back and must pass untouched.
    again = copy.deepcopy(doc)
    again["request"]["uid"] = doc["request"]["uid"] + "-again"
    again["request"]["object"] = pod
    check(decode_patch(review(curl, base, again)) is None, "%s: idempotent" % tag)
    return resp


def variants(optin):
    """Captured opt-in review, and variants built from it in memory."""
    out = [("captured", copy.deepcopy(optin))]
    bare = copy.deepcopy(optin)
    obj = bare["request"]["object"]
    del obj["metadata"]["annotations"]
    del obj["spec"]["volumes"]
    for c in obj["spec"]["containers"]:
        c.pop("env", None)
        c.pop("volumeMounts", None)
    obj["metadata"]["labels"]["kvshare.io/role"] = "prefill"
    bare["request"]["uid"] = "bare-0001"
    out.append(("no maps or arrays", bare))
    auth = copy.deepcopy(optin)
    auth["request"]["object"]["metadata"]["annotations"]["kvshare.io/auth-secret"] = "pool-token"
    auth["request"]["object"]["spec"]["containers"][0]["env"] = [
        {"name": "KVSHARE_ROLE", "value": "prefill"}, {"name": "LD_PRELOAD"}]
    auth["request"]["uid"] = "auth-0001"
    out.append(("auth secret, user env", auth))
    gen = copy.deepcopy(optin)
    meta = gen["request"]["object"]["metadata"]
    meta["generateName"] = meta.pop("name") + "-"
    del meta["labels"]["kvshare.io/role"]
    gen["request"].pop("name", None)
    gen["request"]["uid"] = "gen-0001"
    out.append(("generateName, default role", gen))
    return out


def main():
    args = parse_args()
    work = workdir("kvsc-https-")
    pki = Pki(args.openssl, work)
    crt, key = pki.leaf("webhook")
    curl = Curl(args.curl, pki.ca_crt)
    version = subprocess.run([args.controller, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.split()[-1]
    srv = Server(args.controller, crt, key, "--image", IMAGE, "--listen-port", str(LISTEN_PORT))
    try:
        base = srv.base
        wait_ready(curl, base)
        code, _ = curl.call(base + "/healthz")
        check(code == 200, "healthz 200")
        # Keep-alive: answering before MHD saw the end of a request used to close the
        # connection, costing a TLS handshake per probe and per error.
        r = subprocess.run([args.curl, "-sv", "--max-time", "20", "--cacert", pki.ca_crt,
                            "-o", "/dev/null", base + "/healthz", "-o", "/dev/null",
                            base + "/nope", "-o", "/dev/null", base + "/metrics"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and r.stderr.count("Re-using existing connection") == 2,
              "GETs and a 404 share one connection: " + r.stderr[-2000:])
        _, m0 = curl.call(base + "/metrics")

        optin = load(args.fixtures, "pod-optin.json")
        patched = 0
        for tag, doc in variants(optin):
            patch_and_check(curl, base, doc, version, tag)
            patched += 1

        # Dry run: same response as the real review, not an emitted patch.
        real = review(curl, base, optin)
        patched += 1
        dry = copy.deepcopy(optin)
        dry["request"]["dryRun"] = True
        check(review(curl, base, dry) == real, "dry run gets the same response")

        # Not ours: allowed, no patch.
        for name in ("deployment.json", "pod-privileged.json"):
            check(decode_patch(review(curl, base, load(args.fixtures, name))) is None,
                  "%s passes untouched" % name)
        bad_role = copy.deepcopy(optin)
        bad_role["request"]["object"]["metadata"]["labels"]["kvshare.io/role"] = "primary"
        resp = review(curl, base, bad_role)
        check(decode_patch(resp) is None, "invalid role: no patch")
        check(any("primary" in w for w in resp["response"].get("warnings", [])),
              "invalid role named in a warning")

        # Bad input: a 4xx with a JSON body naming the problem; the server keeps serving.
        v1beta1 = copy.deepcopy(optin)
        v1beta1["apiVersion"] = "admission.k8s.io/v1beta1"
        no_req = {k: v for k, v in optin.items() if k != "request"}
        no_uid = copy.deepcopy(optin)
        del no_uid["request"]["uid"]
        no_obj = copy.deepcopy(optin)
        del no_obj["request"]["object"]
        wrong_kind = copy.deepcopy(optin)
        wrong_kind["kind"] = "AdmissionRequest"
        big = b'{"pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
        cases = [
            ("not json", lambda: curl.post_json(base + "/mutate", b"<html>"), 400, "JSON"),
            ("v1beta1", lambda: curl.post_json(base + "/mutate", json.dumps(v1beta1).encode()),
             400, "apiVersion"),
            ("wrong kind", lambda: curl.post_json(base + "/mutate",
                                                  json.dumps(wrong_kind).encode()), 400, "kind"),
            ("no request", lambda: curl.post_json(base + "/mutate", json.dumps(no_req).encode()),
             400, "request"),
            ("no uid", lambda: curl.post_json(base + "/mutate", json.dumps(no_uid).encode()),
             400, "uid"),
            ("no object", lambda: curl.post_json(base + "/mutate", json.dumps(no_obj).encode()),
             400, "object"),
            ("over 3 MiB", lambda: curl.post_json(base + "/mutate", big), 413, "large"),
            ("over 3 MiB chunked", lambda: curl.call(
                base + "/mutate", "-H", "Content-Type: application/json", "-H",
                "Transfer-Encoding: chunked", "--data-binary", "@-", data=big), 413, "large"),
            ("text/plain", lambda: curl.post_json(base + "/mutate", json.dumps(optin).encode(),
                                                  "text/plain"), 415, "content type"),
            ("GET /mutate", lambda: curl.call(base + "/mutate"), 405, "method"),
            ("PUT /healthz", lambda: curl.call(base + "/healthz", "-X", "PUT"), 405, "method"),
            ("unknown path", lambda: curl.call(base + "/validate"), 404, "path"),
        ]
        for tag, fn, want, needle in cases:
            code, body = fn()
            check(code == want, "%s: want %d, got %d (%s)" % (tag, want, code, body))
            err = json.loads(body)
            check(needle in err["error"] and err["code"] == want,
                  "%s: body names the problem: %s" % (tag, body))
            code, _ = curl.call(base + "/healthz")
            check(code == 200, "%s: still serving" % tag)

        # 64 clients at once, each with its own uid.
        n = 64
        procs = []
        for i in range(n):
            d = copy.deepcopy(optin)
            d["request"]["uid"] = "par-%04d" % i
            path = os.path.join(work, "par-%d.json" % i)
            with open(path, "w") as f:
                json.dump(d, f)
            procs.append(subprocess.Popen(
                curl.argv(base + "/mutate", "-X", "POST", "-H", "Content-Type: application/json",
                          "--data-binary", "@" + path),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=60)
            check(p.returncode == 0, "parallel curl %d: %s" % (i, err.decode()))
            code, body = Curl.split(out.decode())
            check(code == 200, "parallel %d: HTTP %d" % (i, code))
            resp = json.loads(body)
            check(resp["response"]["uid"] == "par-%04d" % i, "parallel %d: its own uid" % i)
            pod = jsonpatch.apply_patch(optin["request"]["object"], decode_patch(resp))
            check("kvshare.io/injected" in pod["metadata"]["annotations"], "parallel %d" % i)
        patched += n

        _, m1 = curl.call(base + "/metrics")
        d = lambda s: metric(m1, s) - metric(m0, s)  # noqa: E731
        check(d("kvshare_webhook_patches_total") == patched,
              "patches_total grew by %d (dry run not counted): %s" % (
                  patched, d("kvshare_webhook_patches_total")))
        check(d('kvshare_webhook_requests_total{result="dry_run"}') == 1, "one dry run")
        check(d('kvshare_webhook_requests_total{result="patched"}') == patched, "patched count")
        check(d('kvshare_webhook_requests_total{result="too_large"}') == 2, "two 413s")
        check(d('kvshare_webhook_requests_total{result="bad_media"}') == 1, "one 415")
        check(d('kvshare_webhook_requests_total{result="not_found"}') == 1, "one 404")
        check(d('kvshare_webhook_requests_total{result="method_not_allowed"}') == 2, "two 405s")
        check(d('kvshare_webhook_requests_total{result="bad_request"}') == 6, "six 400s")
        check(metric(m1, 'kvshare_webhook_review_duration_seconds_bucket{le="+Inf"}') ==
              metric(m1, "kvshare_webhook_review_duration_seconds_count"), "histogram +Inf")

        rc = srv.stop()
        err = srv.stderr()
        check(rc == 0, "clean exit on SIGTERM, got %d: %s" % (rc, err))
        check("Sanitizer" not in err, "no sanitizer reports: " + err)
    finally:
        srv.cleanup()
    print("ok: webhook over TLS")


if __name__ == "__main__":
    main()
