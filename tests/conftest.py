"""Shared fixtures: where the real TCIA scans are, and small synthetic volumes; how the tests
share the cores under pytest-xdist (CI runs ``-n 2 --dist loadfile --no-loadscope-reorder``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker's TensorFlow, XLA and BLAS get its share of the cores
    (with 2 workers on 2 cores: one thread each), so that the workers do not oversubscribe the
    machine.  Set before any of them is imported; the subprocesses the tests start inherit it.
    A variable already set is left as it is."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // workers))
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    if threads == "1" and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"


_share_the_cores()


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
#: the zoo, the GAN's training loop (its train step is backend-specific) and the pipeline.
BACKEND_MODULES = ("test_models_", "test_train_gan", "test_pipeline", "test_candidates", "test_fpr",
                   "test_inference")


#: Under xdist, CI hands each test module to one worker (``--dist loadfile``: its module fixtures
#: are built once) in collection order (``--no-loadscope-reorder``).  The modules in
#: LONGEST_FIRST (measured on CI's 2-core machine, longest first) are collected first, the others
#: after them in file order, so that the last modules to start are short ones.
LONGEST_FIRST: tuple[str, ...] = (
    "test_detection_quality", "test_cli_detect", "test_bad_input_batch", "test_train", "test_insertion",
    "test_fuzz", "test_ray_engine", "test_models_resnet", "test_lungmask", "test_calibration",
    "test_models_wideresnet", "test_ray_cluster", "test_models_unet", "test_synthetic", "test_models_resnet_v2",
    "test_pipeline", "test_models_vgg", "test_protocol", "test_measurements", "test_models_googlenet",
    "test_models_registry")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.startswith(BACKEND_MODULES):
            item.add_marker(pytest.mark.backends)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))   # stable: file order within
