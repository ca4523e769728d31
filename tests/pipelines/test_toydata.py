import numpy as np
import pytest
import torch

from winnow.pipelines.toydata import MLP, SmallCNN, add_label_noise, make_mnist1d


def test_mnist1d_shapes_and_global_rng_untouched(tmp_path):
    # The global RNG is used on purpose: the generator must leave it as it found it.
    np.random.seed(123)  # noqa: NPY002
    expected_next = np.random.rand()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    data = make_mnist1d(num_samples=200, seed=1, cache_dir=tmp_path)
    assert np.random.rand() == expected_next  # noqa: NPY002
    assert data["x"].shape == (160, 40) and data["x"].dtype == np.float32
    assert data["y_test"].shape == (40,) and data["y"].dtype == np.int64
    again = make_mnist1d(num_samples=200, seed=1, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(again["x"], data["x"])
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_label_noise_changes_exactly_the_fraction():
    y = np.arange(1000) % 10
    noisy, mask = add_label_noise(y, 0.2, seed=3)
    assert mask.sum() == 200
    assert np.all(noisy[mask] != y[mask]) and np.all(noisy[~mask] == y[~mask])
    with pytest.raises(ValueError, match="fraction"):
        add_label_noise(y, 1.5)


@pytest.mark.parametrize("model", [SmallCNN(), MLP()])
def test_models_forward_and_embed(model):
    x = torch.randn(7, 40)
    assert model(x).shape == (7, 10)
    assert model.embed(x).shape[0] == 7
