#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""k8s/deploy gives the reconciler exactly the API access it uses, and runs it."""
import argparse
import os
import subprocess
import sys

SKIP = 77

# (apiGroup, resource, verb) for every request the reconciler makes (reconcile.c; the table
# in docs/controller.md), plus the finalizers update that blockOwnerDeletion needs under
# OwnerReferencesPermissionEnforcement. Server-side apply is a PATCH, and an apply that
# creates the object is also authorized as create.
USED = [("kvshare.io", "kvcachepools", v) for v in ("get", "list", "watch")] + [
    ("kvshare.io", "kvcachepools/status", "patch"),
    ("kvshare.io", "kvcachepools/finalizers", "update")] + [
    (g, r, v) for g, r in (("apps", "deployments"), ("", "services"))
    for v in ("get", "list", "watch", "create", "patch")]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


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
    if r.returncode != 0:
        fail("kubectl kustomize k8s/deploy: " + r.stderr)
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    role = [d for d in docs if d["kind"] == "ClusterRole"][0]
    allowed = {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"]
               for res in rule["resources"] for v in rule["verbs"]}
    missing = [u for u in USED if u not in allowed]
    if missing:
        fail("ClusterRole lacks %r" % missing)
    extra = sorted(a for a in allowed if a not in USED)
    if extra:
        fail("ClusterRole grants more than the reconciler uses: %r" % extra)
    binding = [d for d in docs if d["kind"] == "ClusterRoleBinding"][0]
    dep = [d for d in docs if d["kind"] == "Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    if binding["roleRef"]["name"] != role["metadata"]["name"] or \
            binding["subjects"][0]["name"] != pod["serviceAccountName"]:
        fail("the controller's ServiceAccount is bound to the ClusterRole")
    if pod.get("automountServiceAccountToken") is False:
        fail("the in-cluster token must be mounted")
    if "--no-reconcile" in pod["containers"][0]["args"]:
        fail("the Deployment runs the reconciler (no --no-reconcile)")
    print("ok: reconciler RBAC and Deployment")


if __name__ == "__main__":
    main()
