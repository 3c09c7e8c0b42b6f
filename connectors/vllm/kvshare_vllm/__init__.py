# SPDX-License-Identifier: Apache-2.0
"""kvshare's vLLM integration. Kept import-free: vLLM imports kvshare_vllm.plugin in every
process, and the connector module in the API server too."""

__version__ = "0.1.0"
