# SPDX-License-Identifier: Apache-2.0
"""vLLM general plugin: in a pod the kvshare webhook injected, point vLLM at KVShareConnector
without a command-line change.

vLLM calls register() through the `vllm.general_plugins` entry point in every process, maybe
more than once. register() wraps EngineArgs.create_engine_config once, in a process that has
vllm.engine.arg_utils loaded (or, through a one-shot import hook, when it loads it). The
wrapper fills kv_transfer_config from KVSHARE_VLLM_ROLE when the user gave none, and picks
the sha256_cbor block hash when the user chose no algorithm. vLLM hands the finished config to the engine-core and worker
processes, so they need nothing. Imports nothing heavy (no torch, CUDA or libkvshare) and
never raises into vLLM: any error is one log line, and vLLM runs as if the plugin were absent.
"""
import functools
import logging
import os
import sys

# A child of vLLM's own logger, so the line comes out with vLLM's handler and format.
logger = logging.getLogger("vllm.kvshare")

ENV_ROLE = "KVSHARE_VLLM_ROLE"
ROLES = ("kv_producer", "kv_consumer", "kv_both")
DEFAULT_ROLE = "kv_both"
CONNECTOR = "KVShareConnector"
CONNECTOR_MODULE = "kvshare_vllm.connector"
# Hash algorithms whose keys kvshare can compute: canonical CBOR, not pickle.
CBOR_ALGOS = ("sha256_cbor", "xxhash_cbor")
ALGO = "sha256_cbor"
# vLLM's CacheConfig.prefix_caching_hash_algo default: the value of "not chosen".
DEFAULT_ALGO = "sha256"
ALGO_FLAG = "--prefix-caching-hash-algo"

_ARG_UTILS = "vllm.engine.arg_utils"
_MARK = "_kvshare_wrapped"
_APPLIED = "_kvshare_applied"


def _algo_on_command_line(argv):
    """Did the user pass --prefix-caching-hash-algo (vLLM also accepts underscores)?"""
    for arg in argv:
        if arg.split("=", 1)[0].replace("_", "-") == ALGO_FLAG:
            return True
    return False


def _apply(args):
    """Fill args (an EngineArgs) in place, once; log one line about what was done."""
    if getattr(args, _APPLIED, False):
        return
    setattr(args, _APPLIED, True)
    role = os.environ.get(ENV_ROLE) or DEFAULT_ROLE
    if role not in ROLES:
        logger.warning(
            "kvshare: %s=%r is not one of %s; kv_transfer_config not set",
            ENV_ROLE,
            role,
            ", ".join(ROLES),
        )
        return
    if args.kv_transfer_config is not None:
        logger.info(
            "kvshare: --kv-transfer-config given (kv_connector=%s); left as the user set it",
            getattr(args.kv_transfer_config, "kv_connector", None),
        )
        return
    if getattr(args, "kv_offloading_size", None) is not None:
        logger.info(
            "kvshare: --kv-offloading-size given: vLLM builds its own kv_transfer_config; "
            "left alone"
        )
        return
    from vllm.config import KVTransferConfig  # loaded already: arg_utils imports it

    algo = args.prefix_caching_hash_algo
    note = ""
    if algo == DEFAULT_ALGO and not _algo_on_command_line(sys.argv):
        args.prefix_caching_hash_algo = ALGO
        note = " and prefix_caching_hash_algo=%s" % ALGO
    elif algo not in CBOR_ALGOS:
        note = (
            "; prefix_caching_hash_algo=%s was chosen and left, but it is not CBOR: the "
            "kvshare connector will refuse to start (use %s)" % (algo, " or ".join(CBOR_ALGOS))
        )
    args.kv_transfer_config = KVTransferConfig(
        kv_connector=CONNECTOR, kv_connector_module_path=CONNECTOR_MODULE, kv_role=role
    )
    log = logger.warning if note.startswith(";") else logger.info
    log(
        "kvshare: set kv_transfer_config {kv_connector: %s, kv_connector_module_path: %s, "
        "kv_role: %s}%s (from %s; --kv-transfer-config overrides)",
        CONNECTOR,
        CONNECTOR_MODULE,
        role,
        note,
        ENV_ROLE,
    )


def _wrap(create_engine_config):
    @functools.wraps(create_engine_config)
    def wrapper(self, *args, **kwargs):
        try:
            _apply(self)
        except Exception as e:  # never into vLLM
            logger.warning("kvshare: plugin not applied: %s: %s", type(e).__name__, e)
        return create_engine_config(self, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _install(arg_utils):
    """Wrap arg_utils.EngineArgs.create_engine_config, once."""
    engine_args = arg_utils.EngineArgs
    current = engine_args.create_engine_config
    if not getattr(current, _MARK, False):
        engine_args.create_engine_config = _wrap(current)


class _ArgUtilsHook:
    """A one-shot import hook: wraps EngineArgs as soon as vllm.engine.arg_utils is imported,
    for a process that loads plugins before it (vLLM's own call sites are in that module, so
    this is a safeguard, not the usual path). It only ever looks at that one name."""

    def find_spec(self, name, path=None, target=None):
        if name != _ARG_UTILS:
            return None
        import importlib.util

        _remove_hook()
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_wrap(module):
            exec_module(module)
            try:
                _install(module)
            except Exception as e:  # never into vLLM
                logger.warning("kvshare: plugin not applied: %s: %s", type(e).__name__, e)

        loader.exec_module = exec_and_wrap
        return spec


def _remove_hook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ArgUtilsHook)]


def register():
    """The `vllm.general_plugins` entry point. Acts only where the webhook set
    KVSHARE_VLLM_ROLE; idempotent."""
    try:
        if ENV_ROLE not in os.environ:
            return  # not an injected pod: do nothing, say nothing
        arg_utils = sys.modules.get(_ARG_UTILS)
        if arg_utils is not None:
            _install(arg_utils)
        elif not any(isinstance(f, _ArgUtilsHook) for f in sys.meta_path):
            # Engine-core and worker processes get the finished config and never import it;
            # a process that builds the config will, and gets wrapped then.
            sys.meta_path.insert(0, _ArgUtilsHook())
    except Exception as e:  # never into vLLM
        logger.warning("kvshare: plugin not applied: %s: %s", type(e).__name__, e)
