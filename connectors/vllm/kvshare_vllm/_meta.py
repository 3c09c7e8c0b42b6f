# SPDX-License-Identifier: Apache-2.0
"""What the scheduler-side connector tells its workers each step, and what
each worker tells the scheduler once at start. Plain picklable data: vLLM
ships both across process boundaries."""

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1 import base as _base

_HandshakeBase = getattr(_base, "KVConnectorHandshakeMetadata", object)


@dataclass
class LoadSpec:
    """Fetch blocks [first, first + len(block_ids)) of the chain @hashes into
    @block_ids. @peer is the producer ("host:port" list per TP rank) for P/D;
    @peer_tp: the producer's TP size (kv_transfer_params' tp_size; 0: unknown,
    taken as len(peers)); @notify_only: nothing to fetch, only tell the
    producer we are done."""
    req_id: str
    hashes: list
    first: int
    block_ids: list
    sources: int
    peers: list = field(default_factory=list)
    notify_only: bool = False
    peer_tp: int = 0


@dataclass
class SaveSpec:
    """Blocks of a request the forward pass has just completed: publish them
    (zero-copy, a producer's P/D handoff) and, once the prompt is whole, put
    the chain [0, n) to the cache pool."""
    req_id: str
    hashes: list
    block_ids: list
    publish: bool
    put: bool
    final: bool = False  # the prompt's last full block is in this save


@dataclass
class Handoff:
    """A finished P/D request whose blocks wait for the consumer's read or
    the lease's end (wall-clock @deadline, shared by scheduler and workers)."""
    block_ids: list
    deadline: float


@dataclass
class KVShareMetadata(_base.KVConnectorMetadata):
    loads: list = field(default_factory=list)
    saves: list = field(default_factory=list)
    handoffs: dict = field(default_factory=dict)  # req_id -> Handoff
    released: set = field(default_factory=set)  # finished ids whose blocks are withdrawn now
    delayed: set = field(default_factory=set)  # finished ids whose free waits on puts
    preempted: set = field(default_factory=set)


@dataclass
class KVShareHandshake(_HandshakeBase):
    """One worker's address and layout, for the scheduler (vLLM passes these
    to set_xfer_handshake_metadata keyed by TP rank)."""
    tp_rank: int
    addr: str
    layout_id: int
