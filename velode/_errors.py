"""Errors velode raises on purpose: each carries one line saying what is wrong and how to fix it."""


class VelodeError(Exception):
    """Base class of velode's own errors; the CLI prints their message alone, without a traceback."""


class InputError(VelodeError, ValueError):
    """The data given to velode cannot be fitted as it is (missing layers, NaN, negative counts...)."""


class ConfigError(VelodeError, ValueError):
    """A configuration value velode does not know or cannot use."""


class SolverError(VelodeError, RuntimeError):
    """The ODE solver failed (hit max_steps, non-finite state); the message names the settings to change."""


class RunFolderError(VelodeError, FileExistsError):
    """The run folder holds a run that this command would overwrite; the message says what to pass."""
