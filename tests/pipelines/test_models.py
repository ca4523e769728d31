"""Model factories and safe checkpoint loading for the scoring job."""

import pytest
import torch
import torch.nn.functional as F

from tests.pipelines.scoring_fixtures import mlp
from winnow.pipelines.models import ModelSpec, describe_model, import_object, load_model


class _NotATensor:
    """Any class instance: unpickling it needs code execution, which weights_only forbids."""


def test_checkpoint_weights_are_loaded(tmp_path):
    trained = mlp(seed=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    model, loss_fn = load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))
    assert not model.training
    x = torch.randn(7, 40)
    torch.testing.assert_close(model(x), trained(x))
    y = torch.arange(7) % 10
    torch.testing.assert_close(loss_fn(model(x), y), F.cross_entropy(model(x), y, reduction="none"))
    ident = describe_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))
    assert ident["checkpoint"] == str(path) and len(ident["checkpoint_sha256"]) == 64


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": mlp().state_dict(), "obj": _NotATensor()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))


def test_checkpoint_mismatch_is_an_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(RuntimeError, match="state_dict"):
        load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))


def test_factory_returning_module_and_criterion():
    model, loss_fn = load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp_with_loss"))
    x, y = torch.randn(5, 40), torch.tensor([0, 1, 2, 3, 4])
    assert loss_fn(model(x), y).shape == (5,)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no_colon", ValueError, "module:attr"),
        ("tests.pipelines.scoring_fixtures:missing", ValueError, "no attribute 'missing'"),
        ("not_a_module_xyz:f", ValueError, "cannot import module"),
    ],
)
def test_bad_factory_specs(spec, error, match):
    with pytest.raises(error, match=match):
        import_object(spec) if ":" in spec else ModelSpec(spec)


def test_factory_must_return_a_module():
    with pytest.raises(TypeError, match="expected nn.Module"):
        load_model(ModelSpec("tests.pipelines.scoring_fixtures:make_arrays", kwargs={"n": 2}))
    with pytest.raises(FileNotFoundError):
        ModelSpec("tests.pipelines.scoring_fixtures:mlp", "/nonexistent/ckpt.pt")
