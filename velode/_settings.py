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


#: XLA options of the training step on the CPU: XLA's own loops, not YNNPACK's reduction kernels, for the sums over
#: cells of the loss's gradient (a pancreas fit ~15% faster; BENCHMARKS.md). Dropped where this XLA does not know them.
CPU_STEP_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_checked: dict = {}


def step_compiler_options() -> dict | None:
    """:data:`CPU_STEP_OPTIONS` if the default backend is the CPU and its XLA accepts them, else None."""
    import jax

    backend = jax.default_backend()
    if backend not in _checked:
        options = None
        if backend == "cpu" and CPU_STEP_OPTIONS:
            try:
                jax.jit(lambda x: x + 1, compiler_options=CPU_STEP_OPTIONS).lower(0.0).compile()
                options = dict(CPU_STEP_OPTIONS)
            except jax.errors.JaxRuntimeError:  # an XLA that does not know one of them: its defaults
                options = None
        _checked[backend] = options
    return _checked[backend]
