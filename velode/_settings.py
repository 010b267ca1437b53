"""Process-wide settings: JAX's persistent compilation cache."""

import os
from pathlib import Path

#: Where compiled programs are kept unless told otherwise ($VELODE_COMPILE_CACHE overrides it).
DEFAULT_COMPILE_CACHE = "~/.cache/velode/jax"


def compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep JAX's compiled programs in ``path``, so later fits (in this process or others) skip compilation.

    A fit compiles its training step, loss and outputs for the shapes and settings it uses (seconds
    to tens of seconds on a CPU); with the cache, a second fit of the same shapes and settings (another
    seed, a rerun, the jobs of a sweep) reads them from disk. The compiled programs are those JAX
    would compile, so results do not change. ``path`` defaults to ``$VELODE_COMPILE_CACHE`` or
    ``~/.cache/velode/jax``. The ``velode`` command turns it on (``compile_cache=null`` turns it off).

    Returns the folder used.
    """
    import jax

    folder = Path(os.path.expanduser(str(path or os.environ.get("VELODE_COMPILE_CACHE") or DEFAULT_COMPILE_CACHE)))
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, not only the slow ones: a fit compiles dozens of small ones too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
