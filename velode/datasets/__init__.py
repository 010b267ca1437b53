"""Datasets with known ground truth, for tests, benchmarks and examples."""

from ._simulation import simulation as simulation
from ._simulation import simulation_truth as simulation_truth
from ._synthetic import synthetic as synthetic

__all__ = ["simulation", "simulation_truth", "synthetic"]
