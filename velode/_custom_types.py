"""Shape aliases used across velode (jaxtyping)."""

from jaxtyping import Array, Bool, Float, Int

CellsGenes = Float[Array, "cells genes"]
Genes = Float[Array, " genes"]
Cells = Float[Array, " cells"]
Scalar = Float[Array, ""]

__all__ = ["Array", "Bool", "Float", "Int", "CellsGenes", "Genes", "Cells", "Scalar"]
