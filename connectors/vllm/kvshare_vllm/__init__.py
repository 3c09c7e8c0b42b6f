# SPDX-License-Identifier: Apache-2.0
"""kvshare_vllm: vLLM's KV connector over libkvshare.

Importing this package is cheap on purpose: vLLM's API server imports the
connector module too (VllmConfig.__post_init__ resolves the class), so
nothing here touches torch, CUDA or libkvshare until a connector is built.
"""

__version__ = "0.1.0"
