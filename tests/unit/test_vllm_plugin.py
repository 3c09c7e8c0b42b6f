#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The kvshare vLLM plugin (connectors/vllm/kvshare_vllm/plugin.py) against the vLLM stand-in
(tests/vllm): found through its entry point with PYTHONPATH alone, what it sets and leaves,
idempotence, VLLM_PLUGINS, and that its version is the C library's.

Each case runs in a fresh /usr/bin/python3, as vLLM loads plugins once per process."""
import json
import os
import re
import subprocess
import unittest

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
PKG_DIR = os.path.join(ROOT, "connectors", "vllm")
STANDIN = os.path.join(ROOT, "tests", "vllm")

# The child: build EngineArgs as vLLM does, call create_engine_config (twice with "again"),
# print what came out and every log line the plugin wrote.
CHILD = r"""
import json, logging, sys
lines = []
class H(logging.Handler):
    def emit(self, r):
        lines.append((r.levelname, r.getMessage()))
log = logging.getLogger("vllm.kvshare")
log.addHandler(H()); log.setLevel(logging.DEBUG); log.propagate = False
spec = json.loads(sys.argv[1])
sys.argv = [sys.argv[0]] + spec.get("argv", [])
from vllm.engine.arg_utils import EngineArgs
from vllm.config import KVTransferConfig
kw = dict(spec.get("args", {}))
if "kv" in spec:
    kw["kv_transfer_config"] = KVTransferConfig(**spec["kv"])
results = []
for _ in range(spec.get("times", 1)):
    if spec.get("reload"):
        import vllm.plugins
        vllm.plugins.plugins_loaded = False
        import kvshare_vllm.plugin as p
        p.register()
    args = EngineArgs(**kw)
    cfg = args.create_engine_config()
    if spec.get("again"):
        cfg = args.create_engine_config()
    kv = cfg.kv_transfer_config
    results.append({
        "kv": None if kv is None else {
            "kv_connector": kv.kv_connector,
            "kv_connector_module_path": kv.kv_connector_module_path,
            "kv_role": kv.kv_role},
        "algo": cfg.cache_config.prefix_caching_hash_algo,
    })
heavy = sorted(m for m in ("torch", "ctypes", "kvshare_vllm.connector", "kvshare_vllm._lib")
               if m in sys.modules)
print(json.dumps({"results": results, "lines": lines, "heavy": heavy,
                  "plugin_loaded": "kvshare_vllm.plugin" in sys.modules}))
"""


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def run(env=None, **spec):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("KVSHARE_", "VLLM_")) and k != "PYTHONPATH"}
    e["PYTHONPATH"] = PKG_DIR + os.pathsep + STANDIN
    e["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the source tree
    e.update(env or {})
    p = subprocess.run(["/usr/bin/python3", "-c", CHILD, json.dumps(spec)], env=e,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("child failed:\n" + p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


KVSHARE = {"kv_connector": "KVShareConnector",
           "kv_connector_module_path": "kvshare_vllm.connector"}
INJECTED = {"KVSHARE_VLLM_ROLE": "kv_consumer"}


class Plugin(unittest.TestCase):
    def test_injected_pod_gets_the_connector_and_cbor(self):
        for role in ("kv_producer", "kv_consumer", "kv_both"):
            out = run({"KVSHARE_VLLM_ROLE": role})
            self.assertTrue(out["plugin_loaded"], "found through the entry point")
            self.assertEqual(out["results"][0]["kv"], dict(KVSHARE, kv_role=role))
            self.assertEqual(out["results"][0]["algo"], "sha256_cbor")
            self.assertEqual(len(out["lines"]), 1, out["lines"])
            level, msg = out["lines"][0]
            self.assertEqual(level, "INFO")
            self.assertIn("kv_role: " + role, msg)
            self.assertIn("sha256_cbor", msg)
            self.assertEqual(out["heavy"], [], "the plugin imports nothing heavy")

    def test_empty_role_is_kv_both(self):
        out = run({"KVSHARE_VLLM_ROLE": ""})
        self.assertEqual(out["results"][0]["kv"], dict(KVSHARE, kv_role="kv_both"))

    def test_users_config_wins(self):
        mine = {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}
        out = run(INJECTED, kv=mine, args={"prefix_caching_hash_algo": "sha256"})
        self.assertEqual(out["results"][0]["kv"],
                         dict(mine, kv_connector_module_path=None))
        self.assertEqual(out["results"][0]["algo"], "sha256", "nothing else touched")
        self.assertEqual(len(out["lines"]), 1, out["lines"])
        self.assertIn("left as the user set it", out["lines"][0][1])

    def test_users_cbor_choice_is_kept(self):
        out = run(INJECTED, args={"prefix_caching_hash_algo": "xxhash_cbor"})
        self.assertEqual(out["results"][0]["algo"], "xxhash_cbor")
        self.assertEqual(out["results"][0]["kv"], dict(KVSHARE, kv_role="kv_consumer"))
        self.assertEqual(len(out["lines"]), 1, out["lines"])
        self.assertEqual(out["lines"][0][0], "INFO")

    def test_users_non_cbor_choice_is_left_and_logged(self):
        cases = [({"prefix_caching_hash_algo": "xxhash"}, []),
                 # "sha256" is vLLM's default: left only when it was on the command line.
                 ({"prefix_caching_hash_algo": "sha256"},
                  ["--prefix-caching-hash-algo", "sha256"]),
                 ({"prefix_caching_hash_algo": "sha256"}, ["--prefix_caching_hash_algo=sha256"])]
        for args, argv in cases:
            out = run(INJECTED, args=args, argv=argv)
            self.assertEqual(out["results"][0]["algo"], args["prefix_caching_hash_algo"])
            self.assertEqual(out["results"][0]["kv"], dict(KVSHARE, kv_role="kv_consumer"))
            self.assertEqual(len(out["lines"]), 1, out["lines"])
            level, msg = out["lines"][0]
            self.assertEqual(level, "WARNING")
            self.assertIn("refuse to start", msg)

    def test_no_env_no_action_no_log(self):
        out = run()
        self.assertTrue(out["plugin_loaded"])
        self.assertIsNone(out["results"][0]["kv"])
        self.assertEqual(out["results"][0]["algo"], "sha256")
        self.assertEqual(out["lines"], [])

    def test_twice_is_the_same(self):
        # create_engine_config twice on one EngineArgs, and register() run again.
        out = run(INJECTED, again=True, times=2, reload=True)
        for r in out["results"]:
            self.assertEqual(r, {"kv": dict(KVSHARE, kv_role="kv_consumer"),
                                 "algo": "sha256_cbor"})
        self.assertEqual(len(out["lines"]), 2, "one line per EngineArgs: %s" % out["lines"])

    def test_vllm_plugins_excluding_kvshare(self):
        out = run(dict(INJECTED, VLLM_PLUGINS="other"))
        self.assertFalse(out["plugin_loaded"])
        self.assertIsNone(out["results"][0]["kv"])
        self.assertEqual(out["lines"], [])
        out = run(dict(INJECTED, VLLM_PLUGINS="other,kvshare"))
        self.assertEqual(out["results"][0]["kv"], dict(KVSHARE, kv_role="kv_consumer"))

    def test_bad_role_is_one_line_and_nothing(self):
        out = run({"KVSHARE_VLLM_ROLE": "decode"})
        self.assertIsNone(out["results"][0]["kv"])
        self.assertEqual(out["results"][0]["algo"], "sha256")
        self.assertEqual(len(out["lines"]), 1)
        self.assertEqual(out["lines"][0][0], "WARNING")

    def test_errors_never_reach_vllm(self):
        # An EngineArgs without the attributes the plugin reads: vLLM still gets its config.
        code = (
            "import logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "import vllm.engine.arg_utils as a\n"
            "class E:\n"
            "    def create_engine_config(self):\n"
            "        return 'engine-config'\n"
            "a.EngineArgs = E\n"
            "import kvshare_vllm.plugin as p\n"
            "p.register(); p.register()\n"
            "print(E().create_engine_config())\n")
        e = dict(os.environ, PYTHONPATH=PKG_DIR + os.pathsep + STANDIN,
                 PYTHONDONTWRITEBYTECODE="1", **INJECTED)
        p = subprocess.run(["/usr/bin/python3", "-c", code], env=e, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), "engine-config")
        self.assertEqual(p.stderr.count("kvshare: plugin not applied"), 1, p.stderr)


    def test_plugins_loaded_before_arg_utils(self):
        # A process that loads the plugins first: EngineArgs is wrapped when it is imported.
        code = (
            "import sys\n"
            "import vllm.plugins\n"
            "vllm.plugins.load_general_plugins()\n"
            "assert 'vllm.engine.arg_utils' not in sys.modules\n"
            "from vllm.engine.arg_utils import EngineArgs\n"
            "kv = EngineArgs().create_engine_config().kv_transfer_config\n"
            "print(kv.kv_connector, kv.kv_role)\n"
            "from kvshare_vllm.plugin import _ArgUtilsHook\n"
            "print(sum(isinstance(f, _ArgUtilsHook) for f in sys.meta_path))\n")
        e = dict(os.environ, PYTHONPATH=PKG_DIR + os.pathsep + STANDIN,
                 PYTHONDONTWRITEBYTECODE="1", **INJECTED)
        p = subprocess.run(["/usr/bin/python3", "-c", code], env=e, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.split("\n")[:2], ["KVShareConnector kv_consumer", "0"])


class Version(unittest.TestCase):
    def test_dist_info_matches_the_c_library(self):
        h = read(ROOT, "libkvshare", "include", "kvshare.h")
        parts = [re.search(r"#define KVS_VERSION_%s (\d+)" % k, h).group(1)
                 for k in ("MAJOR", "MINOR", "PATCH")]
        want = ".".join(parts)
        cm = read(ROOT, "CMakeLists.txt")
        self.assertEqual(re.search(r"project\(kvshare VERSION ([0-9.]+)", cm).group(1), want)
        infos = [d for d in os.listdir(PKG_DIR) if d.endswith(".dist-info")]
        self.assertEqual(infos, ["kvshare_vllm-%s.dist-info" % want])
        meta = read(PKG_DIR, infos[0], "METADATA")
        self.assertIn("\nVersion: %s\n" % want, meta)
        self.assertIn("\nName: kvshare_vllm\n", meta)
        init = read(PKG_DIR, "kvshare_vllm", "__init__.py")
        self.assertIn('__version__ = "%s"' % want, init)
        ep = read(PKG_DIR, infos[0], "entry_points.txt")
        self.assertEqual(ep, "[vllm.general_plugins]\nkvshare = kvshare_vllm.plugin:register\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
