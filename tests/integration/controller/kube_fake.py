# SPDX-License-Identifier: Apache-2.0
"""A small fake Kubernetes API server for the reconciler tests (http.server + ssl).

It implements only what kvshare-controller uses, with real Kubernetes JSON shapes and
semantics: a global resourceVersion, list with metadata.resourceVersion, watch streams
(?watch=1&resourceVersion=N, chunked transfer encoding, newline-delimited events split across
chunks, BOOKMARKs when allowWatchBookmarks=true), 410 Gone for a compacted resourceVersion
(as an HTTP status or as an ERROR event), GET/POST/PUT/PATCH/DELETE for deployments, services
and kvcachepools (+ /status), defaulting, generation, no-op writes that do not bump
resourceVersion, ownerReferences with a garbage collector, bearer-token auth and injected
failures. Tests drive its state directly.

PATCH takes a JSON merge patch (application/merge-patch+json) or a server-side apply
(application/apply-patch+yaml; JSON bodies only, JSON being YAML). Apply needs ?fieldManager,
creates a missing object (201), sets the fields it names, removes those its manager applied
before and no longer names (unless another manager owns them), and records field ownership in
metadata.managedFields (FieldsV1). A field another manager owns with a different value is a
409 Conflict with the API server's Status body (reason Conflict, causes FieldManagerConflict),
unless ?force=true, which takes the field over. Other writes take ownership of the fields they
change (operation Update, the manager from ?fieldManager or the User-Agent). One honest
simplification: every list is atomic (owned and replaced whole), where the real server treats
containers, env and ports as maps keyed by name.
"""
import copy
import json
import os
import re
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GROUPS = {"kvcachepools": "apis/kvshare.io/v1alpha1", "deployments": "apis/apps/v1",
          "services": "api/v1"}
KINDS = {"kvcachepools": ("kvshare.io/v1alpha1", "KVCachePool"),
         "deployments": ("apps/v1", "Deployment"), "services": ("v1", "Service")}
PATH_RE = re.compile(r"^/(api/v1|apis/apps/v1|apis/kvshare\.io/v1alpha1)"
                     r"(?:/namespaces/([a-z0-9-]+))?/(kvcachepools|deployments|services)"
                     r"(?:/([a-z0-9.-]+))?(?:/(status))?$")


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def status_obj(code, reason, message, details=None):
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": message, "reason": reason, "code": code}
    if details:
        st["details"] = details
    return st


# Field paths (tuples of keys) that no manager owns: identity and server-set metadata.
UNOWNED = (("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
           ("metadata", "uid"), ("metadata", "resourceVersion"), ("metadata", "generation"),
           ("metadata", "creationTimestamp"), ("metadata", "managedFields"))
MISSING = object()


def leaf_paths(obj, prefix=()):
    """Leaves of obj: scalars, lists (atomic here) and empty maps."""
    if isinstance(obj, dict) and obj:
        out = set()
        for k, v in obj.items():
            out |= leaf_paths(v, prefix + (k,))
        return out
    return {prefix}


def fields_of(obj, sub):
    """The fields a write of obj sets: the status subresource only .status, else all but it."""
    return {p for p in leaf_paths(obj) if p and not any(p[:len(u)] == u for u in UNOWNED) and
            (p[0] == "status") == (sub == "status")}


def get_path(obj, path):
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return MISSING
        obj = obj[k]
    return obj


def set_path(obj, path, value):
    for k in path[:-1]:
        if not isinstance(obj.get(k), dict):
            obj[k] = {}
        obj = obj[k]
    obj[path[-1]] = copy.deepcopy(value)


def del_path(obj, path):
    for k in path[:-1]:
        obj = obj.get(k) if isinstance(obj, dict) else None
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


def overlaps(p, q):
    return p[:len(q)] == q or q[:len(p)] == p


def changed_paths(old, new, sub):
    paths = fields_of(old, sub) | fields_of(new, sub)
    return {p for p in paths if get_path(old, p) != get_path(new, p)}


def fields_v1(paths):
    root = {}
    for p in sorted(paths):
        d = root
        for k in p:
            d = d.setdefault("f:" + k, {})
    return root


def dotted(path):
    return "".join("." + k for k in path)


def default(resource, obj):
    """What the API server would fill in, so drift checks must tolerate extra fields."""
    spec = obj.setdefault("spec", {})
    if resource == "deployments":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate":
                                     {"maxSurge": "25%", "maxUnavailable": "25%"}})
        pod = spec.setdefault("template", {}).setdefault("spec", {})
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        for c in pod.get("containers", []):
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            for p in c.get("ports", []):
                p.setdefault("protocol", "TCP")
            for e in c.get("env", []):
                fr = e.get("valueFrom", {}).get("fieldRef")
                if fr is not None:
                    fr.setdefault("apiVersion", "v1")
            probe = c.get("readinessProbe")
            if probe:
                for k, v in (("timeoutSeconds", 1), ("successThreshold", 1),
                             ("failureThreshold", 3)):
                    probe.setdefault(k, v)
    elif resource == "services":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if "clusterIP" not in spec:
            spec["clusterIP"] = "10.96.0.%d" % (hash(obj["metadata"]["name"]) % 200 + 10)
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        for p in spec.get("ports", []):
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))


def matches(obj, selector):
    labels = obj["metadata"].get("labels", {})
    for term in filter(None, (selector or "").split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class FakeKube:
    def __init__(self, cert, key, token, tls=True):
        """tls=False serves plain http, for the controller's --insecure-kube-api test."""
        self.token = token
        self.cond = threading.Condition()
        self.rv = 1000
        self.objs = {}       # (resource, ns, name) -> object
        self.events = []     # (rv, resource, ns, type, object)
        self.compacted = 0   # a watch from a resourceVersion below this gets 410
        self.expire_mode = "event"  # how 410 is told: "event" (ERROR event) or "http"
        self.watch_gen = 0   # bumping it ends every open watch
        self.fail_until = 0.0
        self.fail_code = 500
        self.apply_faults = []  # HTTP statuses for the next server-side applies, in order
        self.managers = {}   # (resource, ns, name) -> [{manager, operation, subresource, fields}]
        self.bookmarks = []  # (time, resource, resourceVersion) of every BOOKMARK sent
        self.log = []        # (time, method, path, code, query dict, content type)
        self.closing = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def do_PATCH(self):
                fake._handle(self, "PATCH")

            def do_DELETE(self):
                fake._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http",
                                          self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- state, as the tests and the handlers change it -------------------------------
    def _emit(self, resource, ns, etype, obj):
        self.events.append((self.rv, resource, ns, etype, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _store(self, resource, ns, name, obj, etype):
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._render_managed(resource, (resource, ns, name), obj)
        self.objs[(resource, ns, name)] = obj
        self._emit(resource, ns, etype, obj)
        return obj

    def _write(self, resource, ns, name, new, old):
        """Store new unless it equals old (a no-op write keeps the resourceVersion). A change
        of field ownership alone is a change, as on a real server."""
        self._render_managed(resource, (resource, ns, name), new)
        if old is not None:
            a, b = copy.deepcopy(new), copy.deepcopy(old)
            for o in (a, b):
                o["metadata"].pop("resourceVersion", None)
                o["metadata"].pop("generation", None)
            if a == b:
                return old, False
            if new.get("spec") != old.get("spec") and resource != "services":
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        return self._store(resource, ns, name, new, "MODIFIED" if old else "ADDED"), True

    # ---- field ownership (managedFields) ------------------------------------------------
    def _own(self, key, manager, operation, sub, paths, replace, take):
        """Give manager the paths: replace its set (apply) or add to it (update). take: strip
        the overlapping paths from every other manager (forced apply, update)."""
        ents = self.managers.setdefault(key, [])
        me = (manager, operation, sub)
        if take:
            for e in ents:
                if (e["manager"], e["operation"], e["subresource"]) != me:
                    e["fields"] = {q for q in e["fields"]
                                   if not any(overlaps(p, q) for p in paths)}
        mine = [e for e in ents if (e["manager"], e["operation"], e["subresource"]) == me]
        if not mine:
            mine = [{"manager": manager, "operation": operation, "subresource": sub,
                     "fields": set()}]
            ents.append(mine[0])
        mine[0]["fields"] = set(paths) if replace else mine[0]["fields"] | set(paths)
        ents[:] = [e for e in ents if e["fields"]]

    def _render_managed(self, resource, key, obj):
        api_version = KINDS[resource][0]
        mf = []
        for e in self.managers.get(key, []):
            ent = {"manager": e["manager"], "operation": e["operation"],
                   "apiVersion": api_version, "fieldsType": "FieldsV1",
                   "fieldsV1": fields_v1(e["fields"])}
            if e["subresource"]:
                ent["subresource"] = e["subresource"]
            mf.append(ent)
        if mf:
            obj["metadata"]["managedFields"] = mf
        else:
            obj["metadata"].pop("managedFields", None)

    def owners(self, resource, ns, name, path):
        """Managers that own path (a tuple of keys) of an object, or a path under it."""
        with self.cond:
            return sorted({e["manager"] for e in self.managers.get((resource, ns, name), [])
                           for q in e["fields"] if q[:len(path)] == path})

    def apply(self, resource, ns, name, obj, manager, force=False, sub=None):
        """A server-side apply, as PATCH with application/apply-patch+yaml does it."""
        with self.cond:
            code, doc = self._apply(resource, ns, name, sub, copy.deepcopy(obj), manager, force)
            return code, copy.deepcopy(doc)

    def _apply(self, resource, ns, name, sub, body, manager, force):
        key = (resource, ns, name)
        old = self.objs.get(key)
        api_version, kind = KINDS[resource]
        if not isinstance(body, dict):
            return 400, status_obj(400, "BadRequest", "the body is not an object")
        if body.get("apiVersion") != api_version or body.get("kind") != kind:
            return 400, status_obj(400, "BadRequest", "the API version and kind in the data "
                                   "(%s, %s) do not match the expected ones (%s, %s)" %
                                   (body.get("apiVersion"), body.get("kind"), api_version, kind))
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            return 400, status_obj(400, "BadRequest", "the name of the object (%s) does not "
                                   "match the name on the URL (%s)" % (meta.get("name"), name))
        if meta.get("namespace", ns) != ns:
            return 400, status_obj(400, "BadRequest", "the namespace of the object does not "
                                   "match the namespace on the request")
        paths = fields_of(body, sub)
        if old is None:
            if sub == "status":
                return 404, status_obj(404, "NotFound", '%s "%s" not found' % (resource, name))
            return self._create(resource, ns, body, manager, "Apply")
        conflicts = []
        for e in self.managers.get(key, []):
            if e["manager"] == manager:
                continue
            for q in sorted(e["fields"]):
                for p in sorted(paths):
                    if overlaps(p, q) and get_path(old, p) != get_path(body, p):
                        conflicts.append((e["manager"], p))
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "field": dotted(p),
                       "message": 'conflict with "%s" using %s' % (m, api_version)}
                      for m, p in conflicts]
            msg = "Apply failed with %d conflict%s: %s" % (
                len(causes), "" if len(causes) == 1 else "s",
                "; ".join("%s: %s" % (c["message"], c["field"]) for c in causes))
            return 409, status_obj(409, "Conflict", msg, {
                "name": name, "group": GROUPS[resource].split("/")[-2]
                if resource != "services" else "", "kind": resource, "causes": causes})
        new = copy.deepcopy(old)
        prev = [e for e in self.managers.get(key, []) if e["manager"] == manager and
                e["operation"] == "Apply" and e["subresource"] == sub]
        others = [q for e in self.managers.get(key, []) if e not in prev for q in e["fields"]]
        for p in (prev[0]["fields"] if prev else set()) - paths:
            if not any(overlaps(p, q) for q in others):
                del_path(new, p)  # applied before, not now, and nobody else wants it
        for p in paths:
            set_path(new, p, get_path(body, p))
        code, new = self._check(resource, sub, old, new)
        if code != 200:
            return code, new
        self._own(key, manager, "Apply", sub, paths, replace=True, take=bool(conflicts))
        return 200, self._write(resource, ns, name, new, old)[0]

    def _check(self, resource, sub, old, new):
        """The rules every write of an existing object passes; (200, new) or an error."""
        # The status subresource writes only .status; the main resource never does.
        if sub == "status":
            st = new.get("status")
            new = copy.deepcopy(old)
            new["status"] = st
            if st is None:
                new.pop("status")
            return 200, new
        new["status"] = copy.deepcopy(old.get("status"))
        if new["status"] is None:
            new.pop("status")
        new["metadata"].update({k: old["metadata"][k] for k in
                                ("uid", "namespace", "name", "creationTimestamp",
                                 "generation")})
        new["apiVersion"], new["kind"] = KINDS[resource]
        if resource == "services" and \
                new.get("spec", {}).get("clusterIP") != old["spec"].get("clusterIP"):
            return 422, status_obj(422, "Invalid", "spec.clusterIP: field is immutable")
        if resource == "deployments" and \
                new.get("spec", {}).get("selector") != old["spec"].get("selector"):
            return 422, status_obj(422, "Invalid", "spec.selector: field is immutable")
        default(resource, new)
        return 200, new

    def _update_owned(self, resource, ns, name, sub, old, new, manager):
        """A non-apply write: its manager takes the fields it changed."""
        paths = changed_paths(old, new, sub)
        if paths:
            self._own((resource, ns, name), manager, "Update", sub, paths, replace=False,
                      take=True)
        return self._write(resource, ns, name, new, old)[0]

    def create(self, resource, ns, obj, manager="test"):
        with self.cond:
            return copy.deepcopy(self._create(resource, ns, obj, manager)[1])

    def _create(self, resource, ns, obj, manager="test", operation="Update"):
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, status_obj(422, "Invalid", "metadata.name: Required value")
        if (resource, ns, name) in self.objs:
            return 409, status_obj(409, "AlreadyExists", '%s "%s" already exists' %
                                   (resource, name))
        api_version, kind = KINDS[resource]
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta.update(namespace=ns, uid=str(uuid.uuid4()), generation=1,
                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if resource == "deployments":
            sel = obj.get("spec", {}).get("selector", {}).get("matchLabels", {})
            tl = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
            if not sel or any(tl.get(k) != v for k, v in sel.items()):
                return 422, status_obj(422, "Invalid", "spec.template.metadata.labels: "
                                       "`selector` does not match template `labels`")
        obj.pop("status", None)
        meta.pop("managedFields", None)
        self.managers[(resource, ns, name)] = [
            {"manager": manager, "operation": operation, "subresource": None,
             "fields": fields_of(obj, None)}]
        default(resource, obj)
        return 201, self._store(resource, ns, name, obj, "ADDED")

    def get(self, resource, ns, name):
        with self.cond:
            o = self.objs.get((resource, ns, name))
            return copy.deepcopy(o) if o else None

    def update(self, resource, ns, name, fn, manager="kubectl-edit"):
        """Apply fn to a copy of the object (as a user would with kubectl edit); manager
        takes the fields it changed, as a real update does."""
        with self.cond:
            old = self.objs[(resource, ns, name)]
            new = copy.deepcopy(old)
            fn(new)
            key = (resource, ns, name)
            paths = changed_paths(old, new, None) | changed_paths(old, new, "status")
            if paths:
                self._own(key, manager, "Update", None, paths, replace=False, take=True)
            return copy.deepcopy(self._write(resource, ns, name, new, old)[0])

    def delete(self, resource, ns, name):
        with self.cond:
            self._delete(resource, ns, name)

    def _delete(self, resource, ns, name):
        obj = self.objs.pop((resource, ns, name), None)
        self.managers.pop((resource, ns, name), None)
        if obj is None:
            return None
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(resource, ns, "DELETED", obj)
        # The garbage collector: dependents whose owner is gone go too.
        uid = obj["metadata"]["uid"]
        for key, o in list(self.objs.items()):
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", [])):
                self._delete(*key)
        return obj

    def expire(self, mode):
        """Compact history: every open watch ends and resuming it gets 410 Gone."""
        with self.cond:
            self.rv += 1  # an unrelated write, so no watcher's resourceVersion is current
            self.compacted = self.rv
            self.expire_mode = mode
            self.watch_gen += 1
            self.cond.notify_all()

    def compact_to(self, rv):
        """Compact history up to rv with no write of its own, and end every open watch: a
        watcher that resumes from rv or later (as bookmarks let it) is not told 410."""
        with self.cond:
            self.compacted = rv
            self.expire_mode = "http"
            self.watch_gen += 1
            self.cond.notify_all()

    def unrelated_write(self):
        """A write to something no watch here sees, so only bookmarks tell of it."""
        with self.cond:
            self.rv += 1
            self.cond.notify_all()
            return self.rv

    def fail_apply(self, codes):
        """Answer the next server-side applies with these HTTP statuses, in order."""
        with self.cond:
            self.apply_faults.extend(codes)

    def fail(self, seconds, code=500):
        with self.cond:
            self.fail_code = code
            self.fail_until = time.monotonic() + seconds
            self.watch_gen += 1
            self.cond.notify_all()

    def requests(self, since=0.0, methods=None):
        with self.cond:
            return [r for r in self.log if r[0] >= since and (methods is None or
                                                              r[1] in methods)]

    # ---- HTTP --------------------------------------------------------------------------
    def _send(self, h, code, doc):
        body = json.dumps(doc).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h, method):
        url = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        code, doc = self._route(h, method, url.path, q, raw)
        if code is None:
            return  # a watch, already answered
        with self.cond:
            self.log.append((time.monotonic(), method, url.path, code, q,
                             h.headers.get("Content-Type", "")))
        self._send(h, code, doc)

    def _route(self, h, method, path, q, raw):
        if h.headers.get("Authorization") != "Bearer " + self.token:
            return 401, status_obj(401, "Unauthorized", "Unauthorized")
        with self.cond:
            if time.monotonic() < self.fail_until:
                return self.fail_code, status_obj(self.fail_code, "InternalError",
                                                  "injected failure")
        m = PATH_RE.match(path)
        if not m or GROUPS[m.group(3)] != m.group(1):
            return 404, status_obj(404, "NotFound", "the server could not find the requested "
                                   "resource")
        _, ns, resource, name, sub = m.groups()
        if method == "GET" and name is None:
            if q.get("watch") in ("1", "true"):
                self._watch(h, resource, ns, q)
                return None, None
            return self._list(resource, ns, q)
        if ns is None:
            return 405, status_obj(405, "MethodNotAllowed", "namespace required")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, status_obj(400, "BadRequest", "body is not JSON")
        ctype = h.headers.get("Content-Type", "")
        # Without ?fieldManager, the API server names the manager after the User-Agent.
        manager = q.get("fieldManager") or h.headers.get("User-Agent", "unknown").split("/")[0]
        with self.cond:
            if method == "PATCH" and ctype == "application/apply-patch+yaml":
                if not q.get("fieldManager"):
                    return 422, status_obj(422, "Invalid", 'PatchOptions.meta.k8s.io "" is '
                                           "invalid: fieldManager: Required value: is "
                                           "required for apply patch")
                if self.apply_faults:
                    c = self.apply_faults.pop(0)
                    if c == 409:
                        return 409, status_obj(409, "Conflict", "Operation cannot be fulfilled "
                                               'on %s "%s": the object has been modified; '
                                               "please apply your changes to the latest "
                                               "version and try again" % (resource, name),
                                               {"name": name, "kind": resource})
                    return c, status_obj(c, "InternalError", "injected failure")
                if name is None or ns is None:
                    return 405, status_obj(405, "MethodNotAllowed", method)
                return self._apply(resource, ns, name, sub, body, q["fieldManager"],
                                   q.get("force") in ("true", "1", "True"))
            elif "force" in q:
                return 422, status_obj(422, "Invalid", "force: Forbidden: may not be "
                                       "specified for non-apply patch")
            if method == "POST" and name is None:
                if ctype != "application/json" or not isinstance(body, dict):
                    return 415, status_obj(415, "UnsupportedMediaType", ctype)
                if body.get("metadata", {}).get("namespace", ns) != ns:
                    return 400, status_obj(400, "BadRequest", "namespace mismatch")
                return self._create(resource, ns, body, manager)
            key = (resource, ns, name)
            old = self.objs.get(key)
            if name is None or method == "POST":
                return 405, status_obj(405, "MethodNotAllowed", method)
            if old is None:
                return 404, status_obj(404, "NotFound", '%s "%s" not found' % (resource, name))
            if method == "GET":
                return 200, copy.deepcopy(old)
            if method == "DELETE":
                return 200, self._delete(resource, ns, name)
            if method == "PATCH":
                if ctype != "application/merge-patch+json":
                    return 415, status_obj(415, "UnsupportedMediaType",
                                           "the body of the request was in an unknown format")
                new = merge_patch(old, body)
            elif method == "PUT":
                rv = body.get("metadata", {}).get("resourceVersion")
                if rv is not None and rv != old["metadata"]["resourceVersion"]:
                    return 409, status_obj(409, "Conflict", "the object has been modified")
                new = copy.deepcopy(body)
            else:
                return 405, status_obj(405, "MethodNotAllowed", method)
            code, new = self._check(resource, sub, old, new)
            if code != 200:
                return code, new
            return 200, copy.deepcopy(self._update_owned(resource, ns, name, sub, old, new,
                                                         manager))

    def _list(self, resource, ns, q):
        with self.cond:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objs.items())
                     if r == resource and (ns is None or n == ns) and
                     matches(o, q.get("labelSelector"))]
            api_version, kind = KINDS[resource]
            return 200, {"apiVersion": api_version, "kind": kind + "List",
                         "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _watch(self, h, resource, ns, q):
        try:
            since = int(q.get("resourceVersion") or "0")
        except ValueError:
            since = 0
        timeout = float(q.get("timeoutSeconds") or 1800)
        sel = q.get("labelSelector")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        with self.cond:
            gen = self.watch_gen
            expired = since < self.compacted
            mode = self.expire_mode
            self.log.append((time.monotonic(), "WATCH", h.path.split("?")[0],
                             410 if expired and mode == "http" else 200, q, ""))
        gone = status_obj(410, "Expired", "too old resource version: %d (%d)" %
                          (since, self.compacted))
        if expired and mode == "http":
            self._send(h, 410, gone)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        try:
            if expired:
                chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                chunk(b"")
                return
            end = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            while True:
                with self.cond:
                    pending = [e for e in self.events if e[0] > since and e[1] == resource and
                               (ns is None or e[2] == ns) and matches(e[4], sel)]
                    if not pending and not self.closing and gen == self.watch_gen:
                        self.cond.wait(timeout=min(0.5, max(0.0, end - time.monotonic())))
                        pending = [e for e in self.events if e[0] > since and
                                   e[1] == resource and (ns is None or e[2] == ns) and
                                   matches(e[4], sel)]
                    stop = self.closing or gen != self.watch_gen
                    rv_now = self.rv
                for rv, _, _, etype, obj in pending:
                    line = json.dumps({"type": etype, "object": obj}).encode() + b"\n"
                    # Split every event across two chunks (and so, usually, two reads).
                    cut = len(line) // 3
                    chunk(line[:cut])
                    chunk(line[cut:])
                    since = rv
                if stop or time.monotonic() >= end:
                    break
                # The real server sends one about every minute and before it ends a watch;
                # only the object's kind, apiVersion and resourceVersion are meaningful.
                if bookmarks and time.monotonic() - last_bookmark > 1.0:
                    api_version, kind = KINDS[resource]
                    bm = {"type": "BOOKMARK", "object": {"apiVersion": api_version,
                          "kind": kind, "metadata": {"resourceVersion": str(rv_now),
                                                     "creationTimestamp": None}}}
                    chunk(json.dumps(bm).encode() + b"\n")
                    with self.cond:
                        self.bookmarks.append((time.monotonic(), resource, rv_now))
                    since = max(since, rv_now)
                    last_bookmark = time.monotonic()
            chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass


class Controller:
    """kvshare-controller pointed at a FakeKube; reads the bound port from its stdout."""

    def __init__(self, binary, cert, key, fake, ca, token_file, *extra, deadline_s=30):
        import select
        import subprocess
        from kvsc_harness import stderr_sink
        self.stderr_f = stderr_sink()
        self.stderr_text = ""
        env = dict(os.environ)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
             "--kube-api", fake.url, "--kube-ca", ca, "--kube-token-file", token_file,
             "--image", "registry.example/kvshare:test", *extra],
            stdout=subprocess.PIPE, stderr=self.stderr_f, text=True, env=env)
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
            raise RuntimeError("controller did not start: %r %s" % (line, self.stderr()))
        self.base = "https://" + line.split()[-1]
        self.ca = ca

    def stderr(self):
        from kvsc_harness import read_sink
        if not self.stderr_f.closed:
            self.stderr_text = read_sink(self.stderr_f)
        return self.stderr_text

    def metrics(self):
        import urllib.request
        ctx = ssl.create_default_context(cafile=self.ca)
        with urllib.request.urlopen(self.base + "/metrics", context=ctx, timeout=10) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    k, _, v = line.rpartition(" ")
                    out[k] = float(v)
            return out

    def stop(self, deadline_s=20):
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.stderr()
        self.stderr_f.close()
        return rc

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr_f.close()


def wait_for(what, fn, deadline_s=15, on_fail=None):
    """Poll fn until it returns a truthy value; its value, or fail after the deadline."""
    import select
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        select.select([], [], [], 0.02)
    msg = "timed out after %ss waiting for %s (last %r)" % (deadline_s, what, last)
    if on_fail:
        msg += "\n" + on_fail()
    raise AssertionError(msg)
