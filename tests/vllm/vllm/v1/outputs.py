# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/outputs.py: what workers return to the scheduler."""
from dataclasses import dataclass, field
from typing import Any


@dataclass
class KVConnectorOutput:
    finished_sending: set[str] | None = None
    finished_recving: set[str] | None = None
    kv_connector_stats: Any = None
    kv_cache_events: Any = None
    kv_connector_worker_meta: Any = None
    invalid_block_ids: set[int] = field(default_factory=set)
    # Workers may change how many reports the aggregator waits for.
    expected_finished_count: int = 0

    def is_empty(self):
        return (not self.finished_sending and not self.finished_recving
                and not self.kv_connector_stats and not self.kv_cache_events
                and not self.invalid_block_ids and self.kv_connector_worker_meta is None)


@dataclass
class ModelRunnerOutput:
    """Upstream carries logits-derived sampled token ids; here each rank returns
    the partial sums of its own KV heads (req_id -> int) and the executor adds
    them, which stands in for the TP all-reduce before sampling."""
    req_ids: list[str]
    partials: dict[str, int]
    kv_connector_output: KVConnectorOutput | None = None
