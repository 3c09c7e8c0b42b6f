# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/sampling_params.py: only what reaches the connector.

kv_transfer_params travel in extra_args["kv_transfer_params"] as upstream
(the OpenAI server puts the request body's field there)."""
from dataclasses import dataclass
from typing import Any


@dataclass
class SamplingParams:
    max_tokens: int | None = 16
    extra_args: dict[str, Any] | None = None
