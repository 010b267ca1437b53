"""velode: RNA velocity as a neural ODE with a shared latent time."""

__version__ = "0.1.0"

from ._errors import ConfigError as ConfigError
from ._errors import InputError as InputError
from ._errors import SolverError as SolverError
from ._errors import VelodeError as VelodeError
