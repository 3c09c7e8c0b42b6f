# SPDX-License-Identifier: Apache-2.0
"""Unit tests of kvshare_vllm's pieces that need no vLLM: how KV tensors in
vLLM's shapes become kvs segments, and the start-up checks.

Run: /usr/bin/python3 -m unittest connectors/vllm/tests/test_kvshare_vllm.py
(PYTHONPATH=connectors/vllm; KVSHARE_LIBRARY=<build>/libkvshare/libkvshare.so.0)."""

import ctypes
import os
import subprocess
import sys
import unittest
from types import SimpleNamespace as NS

try:
    import torch
except ImportError:  # Debian's python3-torch; the suite installs it
    print("SKIP: torch is not importable by", sys.executable)
    sys.exit(77)

from kvshare_vllm import _config, _layout, _lib, _worker

NB, BS, H, D = 6, 4, 2, 8


def segment_bytes(seg, block):
    base, stride, nbytes, _ = seg
    return ctypes.string_at(base + block * stride, nbytes)


def tbytes(t):
    return t.contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else \
        t.contiguous().view(torch.int16).numpy().tobytes()


class Layout(unittest.TestCase):
    def check_blocks(self, segments, expect):
        """expect(layer, block) -> the bytes each of that layer's segments holds."""
        per_layer = len(segments) // 2
        for layer in range(2):
            for b in range(NB):
                got = b"".join(segment_bytes(s, b)
                               for s in segments[layer * per_layer:(layer + 1) * per_layer])
                self.assertEqual(got, expect(layer, b), f"layer {layer} block {b}")

    def test_blocks_first_nhd_is_one_segment_per_layer(self):
        caches = {f"l{i}": torch.randn(NB, 2, BS, H, D).half() for i in range(2)}
        segs, info = _layout.describe(caches, NB)
        self.assertEqual(len(segs), 2)
        self.assertEqual(segs[0][2], 2 * BS * H * D * 2)
        self.assertEqual(info["kv_layout"], _lib.KV_NHD)
        self.assertEqual(info["kv_order"], _lib.ORDER_BLOCK_OUTER)
        self.assertEqual((info["heads"], info["head_dim"], info["num_layers"]), (H, D, 2))
        self.check_blocks(segs, lambda l, b: tbytes(caches[f"l{l}"][b]))

    def test_blocks_first_hnd_from_the_stride_order(self):
        # vLLM allocates (num_blocks, 2, heads, block_size, head) and permutes
        # it to the logical (num_blocks, 2, block_size, heads, head).
        phys = [torch.randn(NB, 2, H, BS, D) for _ in range(2)]
        caches = {f"l{i}": p.permute(0, 1, 3, 2, 4) for i, p in enumerate(phys)}
        segs, info = _layout.describe(caches, NB)
        self.assertEqual(len(segs), 2)
        self.assertEqual(info["kv_layout"], _lib.KV_HND)
        self.assertEqual(info["dtype"], "float32")
        self.check_blocks(segs, lambda l, b: tbytes(phys[l][b]))

    def test_kv_outer_gives_k_and_v_segments(self):
        caches = {f"l{i}": torch.randn(2, NB, BS, H, D).bfloat16() for i in range(2)}
        segs, info = _layout.describe(caches, NB)
        self.assertEqual(len(segs), 4)
        self.assertEqual(info["kv_order"], _lib.ORDER_KV_OUTER)
        self.check_blocks(segs, lambda l, b: tbytes(caches[f"l{l}"][0, b]) +
                          tbytes(caches[f"l{l}"][1, b]))

    def test_mla_and_aliased_layers(self):
        t = torch.randn(NB, BS, 576).half()
        other = torch.randn(NB, BS, 576).half()
        segs, info = _layout.describe({"a": t, "b": t, "c": other}, NB)
        self.assertEqual(info["num_layers"], 2)  # "b" aliases "a": counted once
        self.check_blocks(segs, lambda l, b: tbytes((t, other)[l][b]))

    def test_refusals_name_the_problem(self):
        with self.assertRaisesRegex(ValueError, "num_blocks=7"):
            _layout.describe({"a": torch.zeros(NB, 2, BS, H, D)}, 7)
        big = torch.zeros(NB, 2, BS, H, 2 * D)
        with self.assertRaisesRegex(ValueError, "not dense"):
            _layout.describe({"a": big[..., :D]}, NB)
        with self.assertRaisesRegex(ValueError, "differs from the first layer"):
            _layout.describe({"a": torch.zeros(NB, 2, BS, H, D),
                              "b": torch.zeros(NB, 2, BS, H, D).half()}, NB)


class View(unittest.TestCase):
    """The rank's view as kvs_layout_t sees it: the ctypes struct must put
    total_kv_heads and key_tokens where the C struct has them, behind their
    field_mask bits, or the library reads something else."""

    INFO = dict(heads=1, head_dim=D, kv_layout=_lib.KV_HND, kv_order=_lib.ORDER_BLOCK_OUTER,
                dtype="float16", num_layers=2)

    def args(self, heads, rank, size, total=None, block=16, key=None, kv_layout=_lib.KV_HND):
        info = dict(self.INFO, heads=heads, kv_layout=kv_layout)
        return _layout.layout_args("m", info, block, rank, size, total_kv_heads=total,
                                   key_tokens=key)

    def test_total_kv_heads_reaches_the_library(self):
        # 4 ranks over 2 heads (replicated): the model is the one TP 1 with
        # 2 heads describes, not the 4-head model the default would make it.
        rep = self.args(1, 3, 4, total=2)
        self.assertEqual(_lib.make_layout(rep).field_mask, _lib.LAYOUT_FIELD_TOTAL_KV_HEADS)
        self.assertEqual(_lib.model_id(rep), _lib.model_id(self.args(2, 0, 1, kv_layout=0)))
        self.assertNotEqual(_lib.model_id(rep), _lib.model_id(self.args(1, 3, 4)))
        self.assertEqual(_lib.layout_source_ranks(self.args(2, 0, 1), 2), [0, 1])
        self.assertEqual(_lib.layout_source_ranks(self.args(1, 1, 2, total=2), 4), [2])
        self.assertEqual(_lib.layout_source_ranks(rep, 1), [0])

    def test_key_tokens_reaches_the_library(self):
        whole, halves = self.args(2, 0, 1, block=32), self.args(2, 0, 1, block=32, key=16)
        self.assertIsNone(whole["key_tokens"])
        self.assertEqual(_lib.make_layout(halves).field_mask, _lib.LAYOUT_FIELD_KEY_TOKENS)
        self.assertNotEqual(_lib.layout_id(**whole), _lib.layout_id(**halves))
        self.assertIsNone(self.args(2, 0, 1, block=32, key=32)["key_tokens"], "the default")
        bad = dict(halves, key_tokens=12)  # past layout_args' check: the library refuses it
        with self.assertRaises(_lib.KvsError) as e:
            _lib.layout_id(**bad)
        self.assertEqual(e.exception.status, _lib.ERR_INVALID_PARAM)
        with self.assertRaisesRegex(ValueError, "hash block size 12"):
            self.args(2, 0, 1, block=32, key=12)

    def test_heads_must_match_the_model(self):
        with self.assertRaisesRegex(ValueError, "4 KV heads over TP size 2.*hold 1"):
            self.args(1, 0, 2, total=4)
        with self.assertRaisesRegex(ValueError, "3 KV heads over TP size 2"):
            self.args(1, 0, 2, total=3)
        mla = _layout.layout_args("m", dict(self.INFO, mla=True), 16, 1, 4, total_kv_heads=128)
        self.assertEqual(mla["total_kv_heads"], 1, "MLA: one latent on every rank")


class Readers(unittest.TestCase):
    """How many consumer ranks read each producer rank (the count each of
    them announces with its RELEASE, so the producer frees after the last):
    the inverse of layout_source_ranks, with values worked out by hand."""

    INFO, args = View.INFO, View.args

    def worker(self, total, dtp, rank=0, mla=False):
        w = object.__new__(_worker.WorkerSide)
        w.tp_size, w.tp_rank, w._readers, w._mla = dtp, rank, {}, mla
        w._layout_args = self.args(max(1, total // dtp), rank, dtp, total=total)
        return w

    def counts(self, total, ptp, dtp, mla=False):
        w = self.worker(total, dtp, mla=mla)
        return {r: w._readers_of(ptp, r) for r in range(ptp)}

    def test_mla_ranks_read_their_rank_modulo_the_producers(self):
        # Every rank holds the whole latent: our rank q reads producer rank q % ptp.
        for (ptp, dtp), want in [((2, 1), {0: 1, 1: 0}), ((1, 2), {0: 2}),
                                 ((4, 2), {0: 1, 1: 1, 2: 0, 3: 0}), ((2, 2), {0: 1, 1: 1})]:
            with self.subTest(prefill_tp=ptp, decode_tp=dtp):
                self.assertEqual(self.counts(1, ptp, dtp, mla=True), want)

    def test_unread_replicas_are_told_by_one_rank_each(self):
        # (KV heads, prefill TP, decode TP, MLA) -> {our rank: producer ranks it tells}
        cases = [((2, 4, 1, False), {0: [1, 3]}),
                 ((1, 4, 2, False), {0: [1, 3], 1: [2]}),
                 ((4, 2, 1, False), {0: []}),          # no replica: nothing to tell
                 ((1, 2, 1, True), {0: [1]}),           # vllm_mla_tp2to1
                 ((1, 4, 2, True), {0: [2], 1: [3]})]
        for (total, ptp, dtp, mla), want in cases:
            with self.subTest(heads=total, prefill_tp=ptp, decode_tp=dtp, mla=mla):
                got = {q: self.worker(total, dtp, q, mla)._unread_mine(ptp) for q in range(dtp)}
                self.assertEqual(got, want)

    def test_each_producer_rank_counts_its_readers(self):
        cases = [  # (KV heads, prefill TP, decode TP) -> readers per prefill rank
            ((4, 1, 2), {0: 2}),                     # both D ranks read P's one rank
            ((4, 2, 4), {0: 2, 1: 2}),
            ((4, 2, 1), {0: 1, 1: 1}),               # one D rank reads both
            ((4, 4, 2), {0: 1, 1: 1, 2: 1, 3: 1}),
            ((4, 2, 2), {0: 1, 1: 1}),
            ((2, 1, 4), {0: 4}),                     # D replicates each head twice
            ((2, 2, 4), {0: 2, 1: 2}),
            ((1, 1, 2), {0: 2}),                     # vllm_tp1to2rep
            ((2, 4, 1), {0: 1, 1: 0, 2: 1, 3: 0}),   # P replicates: one replica read
        ]
        for (total, ptp, dtp), want in cases:
            with self.subTest(heads=total, prefill_tp=ptp, decode_tp=dtp):
                self.assertEqual(self.counts(total, ptp, dtp), want)


def vconf(algo="sha256_cbor", role="kv_both", extra=None):
    return NS(kv_transfer_config=NS(kv_role=role, kv_connector_extra_config=extra or {},
                                    engine_id="e", kv_load_failure_policy="fail"),
              cache_config=NS(block_size=16, prefix_caching_hash_algo=algo))


class Offload(unittest.TestCase):
    """A put the library refuses as UNSUPPORTED (GPU KV, a pool node on another
    host) is said once and then counted, not logged for every request; other
    failures are logged each time."""

    def worker(self, status):
        w = object.__new__(_worker.WorkerSide)
        w.tp_rank, w._mla, w._puts_unsupported = 0, False, 0

        def put(hashes, block_ids):
            raise _lib.KvsError("kvs_put_ex", status)
        w.pool = NS(put=put)
        return w

    def saves(self, w, n):
        spec = NS(publish=False, put=True, hashes=[b"k" * 32], block_ids=[0], req_id="r")
        with self.assertLogs("kvshare_vllm", level="WARNING") as cm:
            for _ in range(n):
                w._save_one(spec)
        return cm.output

    def test_unsupported_is_said_at_powers_of_two(self):
        w = self.worker(_lib.ERR_UNSUPPORTED)
        out = self.saves(w, 9)
        self.assertEqual(len(out), 4, out)  # the 1st, 2nd, 4th and 8th
        self.assertIn("(8 offloads refused so far)", out[-1])
        self.assertEqual(w._puts_unsupported, 9)

    def test_other_failures_each_time(self):
        out = self.saves(self.worker(_lib.ERR_BUSY), 3)
        self.assertEqual(len(out), 3, out)


class Settings(unittest.TestCase):
    def setUp(self):
        self.env = dict(os.environ)
        os.environ["PYTHONHASHSEED"] = "0"
        for k in ("KVSHARE_LISTEN", "KVSHARE_POOL", "KVSHARE_LEASE_TIMEOUT_MS"):
            os.environ.pop(k, None)

    def tearDown(self):
        os.environ.clear()
        os.environ.update(self.env)

    def test_pickle_hash_is_refused_naming_the_flag(self):
        with self.assertRaisesRegex(ValueError, "--prefix-caching-hash-algo sha256_cbor"):
            _config.Settings(vconf("sha256"))

    def test_missing_hash_seed_is_refused_naming_the_variable(self):
        del os.environ["PYTHONHASHSEED"]
        with self.assertRaisesRegex(ValueError, "PYTHONHASHSEED"):
            _config.Settings(vconf())

    def test_bad_role_and_bad_lease(self):
        with self.assertRaisesRegex(ValueError, "kv_role 'kv_other'"):
            _config.Settings(vconf(role="kv_other"))
        os.environ["KVSHARE_LEASE_TIMEOUT_MS"] = "soon"
        with self.assertRaisesRegex(ValueError, "KVSHARE_LEASE_TIMEOUT_MS='soon'"):
            _config.Settings(vconf())

    def test_listen_port_per_rank_and_lease_sources(self):
        os.environ["KVSHARE_LISTEN"] = "0.0.0.0:7000"
        s = _config.Settings(vconf(extra={"kv_lease_duration": 2.5}))
        self.assertEqual(s.listen_for_rank(3), "0.0.0.0:7003")
        self.assertEqual(s.lease_ms, 2500)
        os.environ["KVSHARE_LISTEN"] = "[::]:0"
        self.assertEqual(_config.Settings(vconf()).listen_for_rank(2), "[::]:0")
        os.environ["KVSHARE_POD_IP"] = "10.1.2.3"
        self.assertEqual(_config.advertised("0.0.0.0:7001"), ("10.1.2.3", 7001))
        self.assertEqual(_config.advertised("192.168.0.5:7001"), ("192.168.0.5", 7001))

    def test_offload_only_for_producers_with_a_pool(self):
        os.environ["KVSHARE_POOL"] = "pool:18515"
        self.assertTrue(_config.Settings(vconf(role="kv_both")).offload)
        self.assertFalse(_config.Settings(vconf(role="kv_consumer")).offload)
        self.assertFalse(_config.Settings(vconf(extra={"offload": False})).offload)


class HostileParams(unittest.TestCase):
    """kv_transfer_params arrive from the HTTP client: nothing in them may
    raise inside vLLM's scheduler or send a load to a malformed address."""

    def setUp(self):
        os.environ["PYTHONHASHSEED"] = "0"
        from kvshare_vllm import _scheduler
        s = _config.Settings(vconf(role="kv_consumer"))
        cfg = NS(parallel_config=NS(tensor_parallel_size=2))
        self.sched = _scheduler.SchedulerSide(cfg, s, lambda: None)

    def req(self, params, blocks=4):
        return NS(request_id="r", num_prompt_tokens=blocks * 16 + 3,
                  block_hashes=[bytes([i]) * 32 for i in range(blocks)],
                  kv_transfer_params=params, num_computed_tokens=0)

    def test_good_params_give_both_ranks(self):
        r = self.req({"do_remote_prefill": True, "remote_host": "10.0.0.5", "remote_port": 7000,
                      "remote_num_blocks": 3})
        self.assertEqual(self.sched._remote(r), (["10.0.0.5:7000", "10.0.0.5:7001"], 3, 0))
        self.assertEqual(self.sched.get_num_new_matched_tokens(r, 0), (48, True))

    def test_producer_tp_size(self):
        # Another TP size: kept (the workers fetch from several ranks), one peer per rank.
        r = self.req({"do_remote_prefill": True, "tp_size": 4,
                      "kvshare_peers": [f"h:{7000 + i}" for i in range(4)]})
        self.assertEqual(self.sched._remote(r), ([f"h:{7000 + i}" for i in range(4)], None, 4))
        r = self.req({"do_remote_prefill": True, "tp_size": 1, "remote_host": "h",
                      "remote_port": 7000})
        self.assertEqual(self.sched._remote(r), (["h:7000"], None, 1))
        # Our own TP size with one listener: the same-split path, as before.
        r = self.req({"do_remote_prefill": True, "tp_size": 2, "kvshare_peers": ["h:7000"]})
        self.assertEqual(self.sched._remote(r), (["h:7000"], None, 0))

    def test_malformed_params_are_a_local_prefill(self):
        bad = [
            {"remote_host": "h", "remote_port": "seven"},
            {"remote_host": "h", "remote_port": 70000},
            {"remote_host": "h", "remote_port": None},
            {"remote_host": ["h"], "remote_port": 1},
            {"kvshare_peers": "h:1"},
            {"kvshare_peers": ["h:1"] * 65},
            {"kvshare_peers": ["h"]},
            {"kvshare_peers": [7]},
            {"remote_host": "h", "remote_port": 1, "remote_num_blocks": -1},
            {"remote_host": "h", "remote_port": 1, "remote_num_blocks": "all"},
            {"remote_host": "h", "remote_port": 1, "tp_size": 0},
            {"remote_host": "h", "remote_port": 1, "tp_size": "2"},
            {"kvshare_peers": ["h:1"], "tp_size": 4},   # another split needs every rank
        ]
        for extra in bad:
            r = self.req(dict(extra, do_remote_prefill=True))
            with self.assertLogs("kvshare_vllm", "WARNING"):
                self.assertEqual(self.sched.get_num_new_matched_tokens(r, 0), (0, False), extra)
        self.assertIsNone(self.sched._remote(self.req("not a dict")))
        self.assertIsNone(self.sched._remote(self.req({"do_remote_prefill": False})))


class Library(unittest.TestCase):
    def test_loads_and_matches_the_package_version(self):
        import kvshare_vllm
        self.assertEqual(_lib.version(), kvshare_vllm.__version__)

    def test_keys_pack_whole_and_zero_padded(self):
        k32, k16 = bytes(range(32)), bytes(range(100, 116))
        buf = _lib.keys_buffer([k32, k16, k32])
        self.assertEqual(bytes(buf), k32 + k16 + b"\0" * 16 + k32)
        self.assertEqual(bytes(_lib.keys_buffer([k32, k32])), k32 * 2)
        with self.assertRaisesRegex(ValueError, "33 bytes"):
            _lib.keys_buffer([bytes(33)])

    def test_a_missing_library_is_named(self):
        code = ("import os; os.environ['KVSHARE_LIBRARY']='/nonexistent/libkvshare.so.0'\n"
                "from kvshare_vllm import _lib\n"
                "try:\n    _lib.lib()\nexcept OSError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=os.environ, check=True).stdout
        self.assertIn("set KVSHARE_LIBRARY", out)
        self.assertIn("/nonexistent/libkvshare.so.0", out)

    def test_import_loads_nothing(self):
        # vLLM's API server imports the connector module: no libkvshare, no CUDA.
        code = ("import sys, kvshare_vllm, kvshare_vllm._config, kvshare_vllm._layout\n"
                "maps = open('/proc/self/maps').read()\n"
                "print('libkvshare' in maps, 'torch' in sys.modules)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=os.environ, check=True).stdout.split()
        self.assertEqual(out, ["False", "False"])


if __name__ == "__main__":
    unittest.main()
