"""velode: RNA velocity as a neural ODE with a shared latent time."""

__version__ = "0.1.0"

from . import datasets as datasets
from . import metrics as metrics
from . import pl as pl
from . import pp as pp
from . import tl as tl
from ._errors import ConfigError as ConfigError
from ._errors import InputError as InputError
from ._errors import SolverError as SolverError
from ._errors import VelodeError as VelodeError
from ._io import read as read
from ._io import validate as validate
from ._settings import compile_cache as compile_cache
