"""Tools: fitting, saving and applying a fitted model to new cells, velocity graph, embedding projection."""

from ._fit import cell_alpha as cell_alpha
from ._fit import fit as fit
from ._fit import fitted_curves as fitted_curves
from ._graph import velocity_embedding as velocity_embedding
from ._graph import velocity_graph as velocity_graph
from ._predict import FittedModel as FittedModel
from ._predict import load_model as load_model
from ._predict import predict as predict
from ._predict import save_model as save_model
