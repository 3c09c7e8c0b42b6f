# SPDX-License-Identifier: Apache-2.0
"""The vLLM connector's way to the shim's context under LD_PRELOAD, now that
the shim loads libkvshare only when needed: nothing of libkvshare is mapped
until kvs_preload_get_ctx (kvshare_vllm._lib.preload_ctx) loads it, and the
connector's own load of the soname then gets that very copy, so the context
the shim hands over is one it can use.

Usage: LD_PRELOAD=<shim> python3 preload_ctx.py <connectors/vllm>"""
import ctypes
import sys


def kvshare_paths():
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "libkvshare.so" in line}


def main():
    sys.path.insert(0, sys.argv[1])
    from kvshare_vllm import _lib

    assert not kvshare_paths(), "libkvshare mapped before it was needed: %s" % kvshare_paths()
    ctx = _lib.preload_ctx()
    assert ctx, "preload_ctx() found no shim context"
    paths = kvshare_paths()
    assert len(paths) == 1, "after kvs_preload_get_ctx: %s" % paths
    lib = _lib.lib()
    assert kvshare_paths() == paths, "the connector loaded a second copy: %s" % kvshare_paths()
    lib.kvs_mem_region_count.restype = ctypes.c_size_t
    lib.kvs_mem_region_count.argtypes = [ctypes.c_void_p]
    assert lib.kvs_mem_region_count(ctx) == 0
    assert _lib.preload_ctx() == ctx, "a second call returns the same context"
    print("ok: the shim loaded %s on demand; the connector shares it" % paths.pop())


if __name__ == "__main__":
    main()
