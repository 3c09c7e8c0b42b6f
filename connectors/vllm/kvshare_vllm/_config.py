# SPDX-License-Identifier: Apache-2.0
"""The connector's settings: KVSHARE_* variables (the same ones the C library
reads) plus what vLLM's own config says. Checked once, at construction, so a
misconfigured pod fails at start with a message naming the flag or variable
to change, not with a silent miss on every request."""

import os
import socket

HASH_ALGOS = ("sha256_cbor", "xxhash_cbor")
ROLES = ("kv_producer", "kv_consumer", "kv_both")


def _env_ms(name, default):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        ms = int(v)
    except ValueError:
        raise ValueError(f"kvshare_vllm: {name}='{v}' is not a whole number of milliseconds")
    if ms <= 0:
        raise ValueError(f"kvshare_vllm: {name}='{v}' must be > 0")
    return ms


def _split_hostport(addr):
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"kvshare_vllm: KVSHARE_LISTEN='{addr}' is not HOST:PORT")
    return host.strip("[]"), int(port)


class Settings:
    def __init__(self, vllm_config):
        ktc = vllm_config.kv_transfer_config
        self.role = ktc.kv_role
        if self.role not in ROLES:
            raise ValueError(f"kvshare_vllm: kv_role '{self.role}' in --kv-transfer-config; "
                             f"accepted: {', '.join(ROLES)}")
        cc = vllm_config.cache_config
        algo = getattr(cc, "prefix_caching_hash_algo", None)
        if algo not in HASH_ALGOS:
            raise ValueError(
                f"kvshare_vllm: the prefix-caching hash is '{algo}'; kvshare keys blocks by "
                f"vLLM's CBOR hashes, so start vLLM with --prefix-caching-hash-algo sha256_cbor "
                f"(or xxhash_cbor) on every pod that shares KV")
        if not os.environ.get("PYTHONHASHSEED"):
            raise ValueError(
                "kvshare_vllm: PYTHONHASHSEED is not set, so vLLM's first block hash "
                "(NONE_HASH) is random per process and no two pods would ever share a key; "
                "set PYTHONHASHSEED to the same value on every pod that shares KV")
        self.hash_algo = algo
        self.block_size = int(cc.block_size)
        self.producer = self.role in ("kv_producer", "kv_both")
        self.consumer = self.role in ("kv_consumer", "kv_both")
        extra = dict(getattr(ktc, "kv_connector_extra_config", None) or {})
        self.lease_ms = _env_ms("KVSHARE_LEASE_TIMEOUT_MS", 30000)
        if "kv_lease_duration" in extra:  # NIXL's key, in seconds
            self.lease_ms = int(float(extra["kv_lease_duration"]) * 1000)
        self.fetch_timeout_ms = _env_ms("KVSHARE_FETCH_TIMEOUT_MS", 5000)
        self.pool = os.environ.get("KVSHARE_POOL", "")
        self.offload = bool(self.pool) and self.producer and bool(extra.get("offload", True))
        self.listen = os.environ.get("KVSHARE_LISTEN", "")
        self.engine_id = getattr(ktc, "engine_id", None) or "kvshare"
        self.failure_policy = getattr(ktc, "kv_load_failure_policy", "fail")

    def listen_for_rank(self, tp_rank):
        """KVSHARE_LISTEN with the port offset by the TP rank: every rank of a
        pod listens, as NIXL offsets its side-channel port. Port 0 stays 0."""
        if not self.listen:
            return ""
        host, port = _split_hostport(self.listen)
        if port:
            port += tp_rank
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertised(addr):
    """The address a consumer can reach @addr at: a wildcard host becomes
    the pod's IP (KVSHARE_POD_IP, which the webhook injects), else this
    host's name resolved."""
    if not addr:
        return None
    host, port = _split_hostport(addr)
    if host in ("0.0.0.0", "::", ""):
        host = os.environ.get("KVSHARE_POD_IP") or ""
        if not host:
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
    return host, port
