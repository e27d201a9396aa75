"""Small shared fixtures for the operator, simulation and CLI tests.

Sizes are tiny on purpose (N <= 16, M = 15, probe 5 px, 2-3 angles): the
tests check numbers, and these numbers do not need big arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptytomo.io import write_data
from ptytomo.simulate import SimulationConfig, simulate


def _tiny_config(**overrides) -> SimulationConfig:
    """A simulation that runs in well under a second on one CPU core."""
    settings = dict(
        phantom="woven-wire",
        size=16,
        n_angles=3,
        detector_size=15,
        probe_diameter=5.0,
        step=3,
        photons=1e6,
        noise="none",
        oversample=1,
        device="cpu",
        precision="float64",
    )
    settings.update(overrides)
    return SimulationConfig(**settings)


@pytest.fixture(scope="session")
def tiny_config():
    """Factory of small SimulationConfig objects: ``tiny_config(oversample=2, ...)``."""
    return _tiny_config


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


@pytest.fixture(scope="session")
def tiny_data(tiny_config):
    """Noise-free float64 simulation of the 16^3 woven wire (3 angles, 15 x 15 frames)."""
    return simulate(tiny_config(), progress=False)


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory, tiny_data):
    """``tiny_data`` written to an HDF5 file in the FORMAT.md layout."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_data(path, tiny_data)
    return path


@pytest.fixture
def zero_phantom(tmp_path):
    """Path of an empty (all-zero) 12^3 volume as ``.npy``."""
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((12, 12, 12), dtype=np.complex64))
    return path
