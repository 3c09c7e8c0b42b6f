#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""k8s/deploy renders with `kubectl kustomize` (offline) and its objects agree with each other
and with what the webhook and the KVCachePool CRD require; the samples fit the CRD."""
import argparse
import os
import subprocess
import sys

SKIP = 77


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kubectl", default="")
    p.add_argument("--root", required=True)
    args = p.parse_args()
    try:
        import yaml
    except ImportError:
        print("SKIP: python3-yaml is not installed")
        sys.exit(SKIP)
    kubectl = args.kubectl if args.kubectl and not args.kubectl.endswith("-NOTFOUND") else ""
    if not kubectl or not os.access(kubectl, os.X_OK):
        print("SKIP: kubectl not found; cannot render k8s/deploy (install kubectl to run this)")
        sys.exit(SKIP)

    r = subprocess.run([kubectl, "kustomize", os.path.join(args.root, "k8s/deploy")],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "kubectl kustomize k8s/deploy: " + r.stderr)
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                 "Service", "MutatingWebhookConfiguration", "Issuer", "Certificate",
                 "CustomResourceDefinition"):
        check(len(by_kind.get(kind, [])) == 1, "exactly one %s rendered" % kind)
    ns = by_kind["Namespace"][0]["metadata"]["name"]
    svc = by_kind["Service"][0]
    dep = by_kind["Deployment"][0]
    cert = by_kind["Certificate"][0]
    issuer = by_kind["Issuer"][0]
    mwc = by_kind["MutatingWebhookConfiguration"][0]
    for obj in (svc, dep, cert, issuer, by_kind["ServiceAccount"][0]):
        check(obj["metadata"].get("namespace") == ns, "%s in %s" % (obj["kind"], ns))

    # Webhook rules from the issue and REFERENCES.md.
    check(len(mwc["webhooks"]) == 1, "one webhook")
    wh = mwc["webhooks"][0]
    check(wh["sideEffects"] == "None", "sideEffects: None")
    check(1 <= wh["timeoutSeconds"] <= 10, "timeoutSeconds <= 10")
    check(wh["matchPolicy"] == "Equivalent", "matchPolicy: Equivalent")
    check(wh["failurePolicy"] == "Ignore", "failurePolicy: Ignore")
    check(wh["reinvocationPolicy"] == "IfNeeded", "reinvocationPolicy: IfNeeded")
    check(wh["admissionReviewVersions"] == ["v1"], "speaks admission.k8s.io/v1 only")
    check(wh["objectSelector"]["matchLabels"] == {"kvshare.io/inject": "true"},
          "objectSelector on the opt-in label")
    exprs = wh["namespaceSelector"]["matchExpressions"]
    check(any(e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn" and
              ns in e["values"] for e in exprs), "namespaceSelector excludes " + ns)
    rule = wh["rules"][0]
    check(rule["resources"] == ["pods"] and rule["operations"] == ["CREATE"], "pods on CREATE")
    ref = wh["clientConfig"]["service"]
    check(ref["name"] == svc["metadata"]["name"] and ref["namespace"] == ns, "points at the Service")
    check(ref["path"] == "/mutate", "path /mutate")
    check(any(p["port"] == ref.get("port", 443) for p in svc["spec"]["ports"]), "Service port")

    # TLS: cert-manager issues for the Service's DNS name and injects the CA.
    check(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] ==
          "%s/%s" % (ns, cert["metadata"]["name"]), "inject-ca-from names the Certificate")
    check("%s.%s.svc" % (svc["metadata"]["name"], ns) in cert["spec"]["dnsNames"],
          "dnsNames has <svc>.<ns>.svc")
    check(cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"] and
          "selfSigned" in issuer["spec"], "self-signed Issuer")

    # The Deployment serves that Secret with the flags the binary knows.
    pod = dep["spec"]["template"]
    check(all(pod["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()),
          "Service selects the controller pods")
    secret_vols = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"]
                   if "secret" in v}
    c = pod["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    tls_vol = [n for n, s in secret_vols.items() if s == cert["spec"]["secretName"]]
    check(len(tls_vol) == 1, "the Certificate's Secret is mounted")
    argv = c["args"]
    check("--no-reconcile" not in argv, "the reconciler runs beside the webhook")
    check("--tls-cert=%s/tls.crt" % mounts[tls_vol[0]] in argv and
          "--tls-key=%s/tls.key" % mounts[tls_vol[0]] in argv, "cert and key from the Secret")
    check(pod["spec"]["serviceAccountName"] == by_kind["ServiceAccount"][0]["metadata"]["name"],
          "runs as its ServiceAccount")
    for probe in ("readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"]["scheme"] == "HTTPS", probe + " over HTTPS")

    # CRD: schema, status subresource, printer columns; samples fit it.
    crd = by_kind["CustomResourceDefinition"][0]
    check(crd["spec"]["group"] == "kvshare.io", "group kvshare.io")
    ver = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"][0]
    check(ver["served"] and ver["storage"] and "status" in ver["subresources"], "status subresource")
    check(len(ver["additionalPrinterColumns"]) >= 3, "printer columns")
    schema = ver["schema"]["openAPIV3Schema"]["properties"]
    spec = schema["spec"]
    check(spec["properties"]["strategy"]["enum"] == ["lru", "lfu"], "strategy enum lru|lfu")
    check("totalMemoryGB" in spec["properties"] and "replicas" in spec["properties"], "spec fields")
    check({"readyReplicas", "conditions"} <= set(schema["status"]["properties"]), "status fields")
    ref = spec["properties"].get("authSecretRef", {})
    check(ref.get("required") == ["name"] and
          ref.get("properties", {}).get("key", {}).get("default") == "token",
          "spec.authSecretRef: name required, key defaults to token")
    check(any("Authenticated" in c["jsonPath"] for c in ver["additionalPrinterColumns"]),
          "a printer column shows whether the pool is authenticated")

    samples = os.path.join(args.root, "k8s/samples")
    seen = set()
    secrets = {}  # name -> keys, of the Secrets in the samples
    pools = []
    for name in sorted(os.listdir(samples)):
        with open(os.path.join(samples, name)) as f:
            for d in yaml.safe_load_all(f):
                seen.add(d["kind"])
                if d["kind"] == "Secret":
                    secrets[d["metadata"]["name"]] = set(d.get("stringData", {})) | set(
                        d.get("data", {}))
                if d["kind"] == "KVCachePool":
                    pools.append((name, d))
                    check(d["apiVersion"] == "kvshare.io/v1alpha1", name + ": apiVersion")
                    for field in spec["required"]:
                        check(field in d["spec"], "%s: has %s" % (name, field))
                    for k, v in d["spec"].items():
                        sch = spec["properties"].get(k)
                        check(sch is not None, "%s: unknown field %s" % (name, k))
                        if "enum" in sch:
                            check(v in sch["enum"], "%s: %s in enum" % (name, k))
                        if sch.get("type") == "integer":
                            check(isinstance(v, int) and v >= sch.get("minimum", v),
                                  "%s: %s integer in range" % (name, k))
                elif d["kind"] == "Deployment":
                    meta = d["spec"]["template"]["metadata"]
                    check(meta["labels"].get("kvshare.io/inject") == "true", name + ": opts in")
                    check(meta["labels"].get("kvshare.io/role") in ("prefill", "decode", "both"),
                          name + ": valid role")
                    check("kvshare.io/pool" in meta.get("annotations", {}), name + ": names a pool")
    check({"KVCachePool", "Deployment"} <= seen, "samples have a pool and vLLM Deployments")
    # Auth is on by default: the sample pool names a Secret of the samples, and its key.
    for name, d in pools:
        ref = d["spec"].get("authSecretRef")
        check(ref is not None, "%s: the sample pool sets spec.authSecretRef" % name)
        check(ref["name"] in secrets and ref.get("key", "token") in secrets[ref["name"]],
              "%s: authSecretRef names a sample Secret and one of its keys" % name)
    print("ok: manifests")


if __name__ == "__main__":
    main()
