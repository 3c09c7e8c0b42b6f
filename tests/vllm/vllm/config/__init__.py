# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm.config: the configs kvshare's tests need, under vLLM's names."""
from vllm.config.kv_transfer import KVTransferConfig

__all__ = ["KVTransferConfig"]
