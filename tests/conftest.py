"""Shared fixtures: one local Ray for the whole session, and MNIST-1D generated once."""

import os

import numpy as np
import pytest

for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)


def pytest_collection_modifyitems(config, items):
    """Tests that use the session's Ray run after all the others (in their order).

    Once ``ray_session`` has started Ray in the pytest process, that Ray's threads live until
    the session ends, and a DataLoader worker forked from the process afterwards can crash: in
    one CI run ``tests/samplers/test_hardbatch.py``'s prefetching worker died of SIGSEGV, after
    the pipelines tests had started Ray. The tests that fork workers run before Ray starts.
    """
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs) shared by every Ray test of the session."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=1 << 30,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist1d_small():
    """MNIST-1D, default generator settings (4000 train / 1000 test), float32/int64 arrays."""
    from winnow.pipelines.toydata import make_mnist1d

    return make_mnist1d(num_samples=5000, seed=42)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on one thread (``pytestmark = pytest.mark.usefixtures(...)``): on a shared
    2-core machine two threads made a 30-token forward of the test LM 85 ms instead of 0.5 ms
    (threads waiting on each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
