# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/distributed/parallel_state.py: the TP rank of this process.

Upstream asks the TP process group; here the test executor sets the rank and
world size once per worker process (_set_tp) before creating the connector.
The scheduler process is rank 0 of world size tensor_parallel_size, as upstream
(EngineCore never joins the TP group, and connectors only ask on workers)."""
_TP_RANK = 0
_TP_WORLD_SIZE = 1


def _set_tp(rank: int, world_size: int) -> None:
    """Test-executor hook, not upstream API."""
    global _TP_RANK, _TP_WORLD_SIZE
    _TP_RANK, _TP_WORLD_SIZE = rank, world_size


def get_tensor_model_parallel_rank() -> int:
    return _TP_RANK


def get_tensor_model_parallel_world_size() -> int:
    return _TP_WORLD_SIZE


def get_tp_group():
    """Upstream returns a GroupCoordinator; only rank_in_group/world_size are given here."""
    class _Group:
        rank_in_group = _TP_RANK
        world_size = _TP_WORLD_SIZE
    return _Group()
