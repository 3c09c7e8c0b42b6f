# SPDX-License-Identifier: Apache-2.0
"""A small fake Kubernetes API server for the reconciler tests (http.server + ssl).

It implements only what kvshare-controller uses, with real Kubernetes JSON shapes and
semantics: a global resourceVersion, list with metadata.resourceVersion, watch streams
(?watch=1&resourceVersion=N, chunked, newline-delimited events, BOOKMARKs), 410 Gone for a
compacted resourceVersion (as an HTTP status or as an ERROR event), GET/POST/PUT/PATCH
(merge patch)/DELETE for deployments, services and kvcachepools (+ /status), defaulting,
generation, no-op writes that do not bump resourceVersion, ownerReferences with a garbage
collector, bearer-token auth and injected failures. Tests drive its state directly.
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


def status_obj(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


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
    def __init__(self, cert, key, token):
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
        self.log = []        # (time, method, path, code)
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
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = "https://127.0.0.1:%d" % self.httpd.server_address[1]
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
        self.objs[(resource, ns, name)] = obj
        self._emit(resource, ns, etype, obj)
        return obj

    def _write(self, resource, ns, name, new, old):
        """Store new unless it equals old (a no-op write keeps the resourceVersion)."""
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

    def create(self, resource, ns, obj):
        with self.cond:
            return copy.deepcopy(self._create(resource, ns, obj)[1])

    def _create(self, resource, ns, obj):
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
        default(resource, obj)
        return 201, self._store(resource, ns, name, obj, "ADDED")

    def get(self, resource, ns, name):
        with self.cond:
            o = self.objs.get((resource, ns, name))
            return copy.deepcopy(o) if o else None

    def update(self, resource, ns, name, fn):
        """Apply fn to a copy of the object (as a user would with kubectl edit)."""
        with self.cond:
            old = self.objs[(resource, ns, name)]
            new = copy.deepcopy(old)
            fn(new)
            return copy.deepcopy(self._write(resource, ns, name, new, old)[0])

    def delete(self, resource, ns, name):
        with self.cond:
            self._delete(resource, ns, name)

    def _delete(self, resource, ns, name):
        obj = self.objs.pop((resource, ns, name), None)
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
            self.log.append((time.monotonic(), method, url.path, code))
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
        with self.cond:
            if method == "POST" and name is None:
                if ctype != "application/json" or not isinstance(body, dict):
                    return 415, status_obj(415, "UnsupportedMediaType", ctype)
                if body.get("metadata", {}).get("namespace", ns) != ns:
                    return 400, status_obj(400, "BadRequest", "namespace mismatch")
                return self._create(resource, ns, body)
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
            # The status subresource writes only .status; the main resource never does.
            if sub == "status":
                st = new.get("status")
                new = copy.deepcopy(old)
                new["status"] = st
            else:
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
            return 200, copy.deepcopy(self._write(resource, ns, name, new, old)[0])

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
        with self.cond:
            gen = self.watch_gen
            expired = since < self.compacted
            mode = self.expire_mode
            self.log.append((time.monotonic(), "WATCH", h.path.split("?")[0],
                             410 if expired and mode == "http" else 200))
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
                if time.monotonic() - last_bookmark > 1.0:
                    api_version, kind = KINDS[resource]
                    bm = {"type": "BOOKMARK", "object": {"apiVersion": api_version,
                          "kind": kind, "metadata": {"resourceVersion": str(rv_now)}}}
                    chunk(json.dumps(bm).encode() + b"\n")
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
        import tempfile
        self.stderr_path = tempfile.mktemp(prefix="kvsc-rec-stderr-")
        self.stderr_f = open(self.stderr_path, "w")
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
        if not self.stderr_f.closed:
            self.stderr_f.flush()
        with open(self.stderr_path) as f:
            return f.read()

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
        self.stderr_f.close()
        return rc

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.stderr_path):
            os.unlink(self.stderr_path)


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
