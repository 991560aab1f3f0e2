"""Shared fixtures: where the real TCIA scans are, and small synthetic volumes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """``$LUNGCAD_REAL_DATA`` or ``../shared/data/real`` beside the repository."""
    env = os.environ.get("LUNGCAD_REAL_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_root()
    if not root.is_dir():
        pytest.skip(f"real TCIA scans not found at {root} (set LUNGCAD_REAL_DATA to their folder)")
    return root


@pytest.fixture(scope="session")
def lidc_dir(real_data) -> Path:
    d = real_data / "lidc-idri"
    if not d.is_dir():
        pytest.skip(f"LIDC-IDRI scan not found at {d}")
    return d


@pytest.fixture(scope="session")
def petct_dir(real_data) -> Path:
    d = real_data / "lung-pet-ct-dx"
    if not d.is_dir():
        pytest.skip(f"Lung-PET-CT-Dx scans not found at {d}")
    return d


#: Test modules that CI runs a second time under KERAS_BACKEND=jax (`pytest -m backends`):
#: the zoo and the pipeline.
BACKEND_MODULES = ("test_models_", "test_pipeline", "test_candidates", "test_fpr", "test_inference")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.startswith(BACKEND_MODULES):
            item.add_marker(pytest.mark.backends)
