# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/core/sched/output.py: what one schedule() hands the workers.

Pickled to every worker process, kv_connector_metadata included, as the
multiproc executor does. CachedRequestData.new_token_ids is filled every
step here (upstream only with pipeline parallelism) because the test workers
do not sample: the executor does, from the ranks' partial sums."""
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list[int] | None
    mm_features: list = field(default_factory=list)
    sampling_params: Any = None
    pooling_params: Any = None
    block_ids: tuple[list[int], ...] = ()
    num_computed_tokens: int = 0
    lora_request: Any = None
    prompt_embeds: Any = None

    @classmethod
    def from_request(cls, request, block_ids: tuple[list[int], ...]) -> "NewRequestData":
        return cls(req_id=request.request_id, prompt_token_ids=list(request.prompt_token_ids),
                   sampling_params=request.sampling_params, block_ids=block_ids,
                   num_computed_tokens=request.num_computed_tokens,
                   lora_request=request.lora_request)


@dataclass
class CachedRequestData:
    req_ids: list[str] = field(default_factory=list)
    resumed_req_ids: set[str] = field(default_factory=set)
    new_token_ids: list[list[int]] = field(default_factory=list)
    all_token_ids: dict[str, list[int]] = field(default_factory=dict)
    new_block_ids: list[tuple[list[int], ...] | None] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)
    num_output_tokens: list[int] = field(default_factory=list)

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    @classmethod
    def make_empty(cls) -> "CachedRequestData":
        return cls()


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    scheduled_encoder_inputs: dict[str, list[int]] = field(default_factory=dict)
    num_common_prefix_blocks: list[int] = field(default_factory=list)
    finished_req_ids: set[str] = field(default_factory=set)
    free_encoder_mm_hashes: list[str] = field(default_factory=list)
    preempted_req_ids: set[str] | None = None
    kv_connector_metadata: Any = None
