# SPDX-License-Identifier: Apache-2.0
from vllm.distributed.kv_transfer.kv_transfer_state import (ensure_kv_transfer_initialized,
                                                            ensure_kv_transfer_shutdown,
                                                            get_kv_transfer_group,
                                                            has_kv_transfer_group,
                                                            is_v1_kv_transfer_group)

__all__ = ["get_kv_transfer_group", "has_kv_transfer_group", "is_v1_kv_transfer_group",
           "ensure_kv_transfer_initialized", "ensure_kv_transfer_shutdown"]
