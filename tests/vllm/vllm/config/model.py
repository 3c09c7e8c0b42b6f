# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/config/model.py: the shape of the test model.

Upstream reads these from the HF config; here they are plain fields. The
getters keep upstream's per-rank rules: KV heads are split over TP ranks but
never below one per rank (replicated when tp > total heads), MLA has one
latent "head"."""
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    model: str = "kvshare-toy"
    # A torch dtype, as upstream. Creating a config imports no torch (the plugin's tests
    # check that), so whoever builds an engine passes one (engine.EngineArgs does).
    dtype: Any = None
    use_mla: bool = False
    num_hidden_layers: int = 4
    total_num_kv_heads: int = 4
    head_size: int = 16
    max_model_len: int = 4096

    def get_num_layers(self, parallel_config) -> int:
        assert self.num_hidden_layers % parallel_config.pipeline_parallel_size == 0
        return self.num_hidden_layers // parallel_config.pipeline_parallel_size

    def get_total_num_kv_heads(self) -> int:
        return 1 if self.use_mla else self.total_num_kv_heads

    def get_num_kv_heads(self, parallel_config) -> int:
        if self.use_mla:
            return 1
        return max(1, self.get_total_num_kv_heads() // parallel_config.tensor_parallel_size)

    def get_head_size(self) -> int:
        return self.head_size
