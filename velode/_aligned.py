"""Arrays that JAX can read in place on the CPU.

XLA's CPU client shares a numpy array's memory (no copy) only when the array starts on a 64-byte
boundary; numpy's allocator guarantees 16. The cells x genes matrices velode fits are allocated
(or, once, copied) with this alignment, so training holds them once.
"""

import numpy as np

ALIGNMENT = 64


def is_aligned(x: np.ndarray) -> bool:
    return x.ctypes.data % ALIGNMENT == 0


def empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + n].view(dtype).reshape(shape)


def aligned(x) -> np.ndarray:
    """``x`` as a C-contiguous float32 array on a 64-byte boundary: ``x`` itself if it already is, else a copy."""
    x = np.asarray(x, np.float32)
    if is_aligned(x) and x.flags.c_contiguous:
        return x
    out = empty(x.shape, np.float32)
    out[...] = x
    return out
