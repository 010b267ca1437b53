"""Former name of experiments/figures.py, kept so that older commands still work: same options, same output.

    python experiments/reproduce_figures.py pancreas [--path FILE] [--only NAME] [--out DIR] [--run RUN_DIR]
    python experiments/reproduce_figures.py synthetic [--only NAME] [--out DIR]
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("figures", Path(__file__).with_name("figures.py"))
_figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_figures)

FIGURES = _figures.FIGURES


def main(argv=None) -> list[Path]:
    return list(_figures.main(argv).values())


if __name__ == "__main__":
    main()
