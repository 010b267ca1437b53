"""Writing run outputs atomically: a killed run never leaves a half-written file under its final name."""

import json
import math
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temporaries(folder, names) -> None:
    """Remove what killed writes of the files ``names`` left in ``folder`` (their temporary files)."""
    for name in names:
        for stale in Path(folder).glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (see the module docstring)."""
    _atomic(Path(path), write)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path, data: dict) -> None:
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


def write_h5ad(path, adata) -> None:
    _atomic(Path(path), lambda tmp: adata.write_h5ad(tmp))


def save_figure(path, fig, *, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG, cropped to what is drawn (so a legend outside the axes is kept)."""
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))
