"""Import helpers for optional optimizer libraries."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """Silence bitsandbytes' import-time warnings about CPU 4-bit GEMM kernels.

    On CPUs with AVX512-BF16, ``import bitsandbytes`` logs that the optional
    ``kernels`` package (4-bit matmul) is missing; it is irrelevant to the 8-bit
    optimizers used here.
    """
    logger = logging.getLogger("bitsandbytes")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)
