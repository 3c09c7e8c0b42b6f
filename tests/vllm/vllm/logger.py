# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/logger.py: connectors call init_logger(__name__) at import."""
import logging
import os


def init_logger(name: str) -> logging.Logger:
    """A stdlib logger; the level comes from VLLM_LOGGING_LEVEL as upstream (default INFO)."""
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("VLLM_LOGGING_LEVEL", "INFO"),
                            format="%(levelname)s %(process)d %(name)s: %(message)s")
    return logger
