#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Holds the build graph to one direction (STYLE.md 1, DESIGN.md "Layout").

Arrows run from cli, connectors, preload, k8s and examples down to the core
(libkvshare/include, libkvshare/src), and from everything down to util/ and
cuda/; never back up or sideways. Checked on the sources, not a build:
  1. every `#include "x.h"` of production code resolves to a folder its
     component may include (its own, or one below it);
  2. only tests/ registers tests, and no production CMakeLists.txt names a
     file under tests/;
  3. the core's CMakeLists.txt never names a connector;
  4. no private source folder (a `src` folder, or one holding *_int.h) is a
     PUBLIC or INTERFACE include directory, except kvs_util (util_int.h is
     what util/ offers everyone) and kvshare_int: the core's
     private headers offered, by name, to connectors and tests;
  5. no component links a library a connector defines (add_library under connectors/)
     unless it is that connector (or connectors/ itself, which hands the built-in
     transports to the core): a connector's program is its own (kvshare-index).

usage: layering.py SOURCE_DIR
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
PROD = ["util", "libkvshare", "cuda", "connectors", "preload", "k8s", "examples"]
SKIP_DIRS = {".git", "tests", "build", "__pycache__"}

CORE_PUBLIC = "libkvshare/include"
CORE_PRIVATE = "libkvshare/src"
BELOW_ALL = [CORE_PUBLIC, "util"]

# component (longest matching path prefix) -> folders it may include from, besides its own.
ALLOWED = {
    "util": [],
    "libkvshare/include": [],
    "libkvshare/src": BELOW_ALL + ["cuda/include"],  # shm.c: VMM export/import
    "libkvshare/cli": BELOW_ALL,
    "cuda": BELOW_ALL + ["cuda/include"],
    "connectors": BELOW_ALL + [CORE_PRIVATE],  # registry.c: the vtables it lists
    "connectors/ucx": BELOW_ALL + [CORE_PRIVATE, "cuda/include"],
    "connectors/index": BELOW_ALL,
    "preload": BELOW_ALL + ["preload/include", "preload/src", "cuda/include"],
    "k8s": BELOW_ALL,
    "examples": BELOW_ALL,
}

# Edges that still run sideways, each with its reason. Remove an entry when it is fixed;
# never add one for new code.
KNOWN = set()

errors = []


def rel(p):
    return os.path.relpath(p, ROOT)


def component(path):
    best = None
    for c in ALLOWED:
        if path == c or path.startswith(c + "/"):
            if best is None or len(c) > len(best):
                best = c
    return best


def prod_files(exts):
    for top in PROD:
        for d, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
            for f in files:
                if f.endswith(exts) or (exts == ("CMakeLists.txt",) and f == "CMakeLists.txt"):
                    yield os.path.join(d, f)


# Where each header lives, by file name (production folders only).
headers = {}
for p in prod_files((".h",)):
    headers.setdefault(os.path.basename(p), []).append(os.path.dirname(rel(p)))

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
for p in prod_files((".c", ".h", ".S")):
    src_dir = os.path.dirname(rel(p))
    comp = component(src_dir)
    if comp is None:
        errors.append("%s: in no known component (add it to ALLOWED in %s)" % (rel(p), rel(__file__)))
        continue
    with open(p, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            name = m.group(1)
            if os.path.exists(os.path.join(ROOT, src_dir, name)):
                continue  # beside the includer
            where = headers.get(os.path.basename(name), [])
            if not where:
                errors.append("%s:%d: \"%s\" is in no production folder" % (rel(p), n, name))
                continue
            ok = False
            for w in where:
                if w == src_dir or w in ALLOWED[comp] or w.startswith(comp + "/"):
                    ok = True
                elif (comp, component(w)) in KNOWN:
                    ok = True
            if not ok:
                errors.append("%s:%d: %s includes \"%s\" from %s: not below it"
                              % (rel(p), n, comp, name, " or ".join(where)))


def cmake_code(path):
    """The file's lines with comments removed (good enough: no '#' in our strings)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            out.append(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "")
    return out


cmake_files = [p for p in prod_files(("CMakeLists.txt",))]
cmake_files += [os.path.join(ROOT, "CMakeLists.txt")]
for d, dirs, files in os.walk(ROOT):
    dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith("build")]
    for f in files:
        if f.endswith(".cmake"):
            cmake_files.append(os.path.join(d, f))

for p in sorted(set(cmake_files)):
    code = cmake_code(p)
    text = "".join(code)
    for n, line in enumerate(code, 1):
        if re.search(r"\badd_test\s*\(", line):
            errors.append("%s:%d: registers a test; tests are registered from tests/ only" % (rel(p), n))
        if re.search(r"(\}|\.\.|\b)/?tests/", line) and p != os.path.join(ROOT, "CMakeLists.txt"):
            errors.append("%s:%d: a production folder names a file under tests/" % (rel(p), n))
        if rel(p) == "libkvshare/CMakeLists.txt" and "connectors" in line:
            errors.append("%s:%d: the core names a connector" % (rel(p), n))
    for m in re.finditer(r"target_include_directories\s*\(([^)]*)\)", text):
        args = m.group(1).split()
        if not args or args[0] in ("kvshare_int", "kvs_util"):
            continue
        scope = None
        for a in args[1:]:
            if a in ("PUBLIC", "PRIVATE", "INTERFACE", "BEFORE", "SYSTEM", "AFTER"):
                if a in ("PUBLIC", "PRIVATE", "INTERFACE"):
                    scope = a
                continue
            if scope == "PRIVATE":
                continue
            d = a.replace("${CMAKE_CURRENT_SOURCE_DIR}", os.path.dirname(rel(p)))
            d = d.replace("${CMAKE_CURRENT_LIST_DIR}", os.path.dirname(rel(p)))
            d = d.replace("${PROJECT_SOURCE_DIR}/", "").strip("/")
            d = d.replace("$<BUILD_INTERFACE:", "").rstrip(">")
            full = os.path.join(ROOT, d)
            private = d.endswith("/src") or (
                os.path.isdir(full) and any(f.endswith("_int.h") for f in os.listdir(full)))
            if private and ("libkvshare/cli", component(d)) not in KNOWN:
                errors.append("%s: %s %s: a private header folder exported %s"
                              % (rel(p), args[0], a, scope or "PUBLIC"))

# 5. Link edges: the libraries each connector defines, and who links them.
conn_libs = {}
for p in sorted(set(cmake_files)):
    r = rel(p)
    if not r.startswith("connectors/"):
        continue
    for m in re.finditer(r"add_library\s*\(\s*([A-Za-z0-9_.+-]+)", "".join(cmake_code(p))):
        conn_libs[m.group(1)] = component(os.path.dirname(r))
for p in sorted(set(cmake_files)):
    r = rel(p)
    if r.startswith("tests/") or r == "CMakeLists.txt":
        continue
    comp = component(os.path.dirname(r))
    for m in re.finditer(r"target_link_libraries\s*\(([^)]*)\)", "".join(cmake_code(p))):
        for a in m.group(1).split()[1:]:
            owner = conn_libs.get(a)
            if owner is None or comp == "connectors" or comp == owner or (
                    comp is not None and comp.startswith(owner + "/")):
                continue
            if (comp, owner) not in KNOWN:
                errors.append("%s: %s links %s from %s: not below it" % (r, comp, a, owner))

for e in errors:
    print("layering: " + e)
if errors:
    sys.exit(1)
print("layering: ok (%d headers, %d CMake files)" % (sum(len(v) for v in headers.values()), len(set(cmake_files))))
