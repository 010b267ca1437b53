"""Tools: fitting, velocity graph, embedding projection."""

from ._fit import cell_alpha as cell_alpha
from ._fit import fit as fit
from ._fit import fitted_curves as fitted_curves
from ._graph import velocity_embedding as velocity_embedding
from ._graph import velocity_graph as velocity_graph
