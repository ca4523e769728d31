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
    with pytest.raises(ValueError, match="does not fit the model"):
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


def _lightning_checkpoint(path, state_dict, prefix="model."):
    """What Lightning's ModelCheckpoint writes for a LightningModule holding ``self.model``
    (plain values only, so ``weights_only=True`` reads it)."""
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {prefix + k: v for k, v in state_dict.items()},
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"hidden": 32, "lr": 0.1},
        },
        path,
    )


def test_lightning_checkpoint_is_refused_with_a_hint_then_loads_with_strip_prefix(tmp_path):
    trained = mlp(seed=5)
    path = tmp_path / "epoch=3-step=120.ckpt"
    _lightning_checkpoint(path, trained.state_dict())
    factory = "tests.pipelines.scoring_fixtures:mlp"
    with pytest.raises(ValueError, match=r"checkpoint keys start with 'model\.'; pass "
                       r"--strip-prefix model\."):  # fmt: skip
        load_model(ModelSpec(factory, str(path)))
    model, _ = load_model(ModelSpec(factory, str(path), strip_prefix="model."))
    x = torch.randn(4, 40)
    torch.testing.assert_close(model(x), trained(x))
    # Keys under another prefix are left out (e.g. a LightningModule's criterion or EMA copy).
    torch.save({"state_dict": {**{"model." + k: v for k, v in trained.state_dict().items()},
                               "criterion.weight": torch.ones(10)}}, path)  # fmt: skip
    model, _ = load_model(ModelSpec(factory, str(path), strip_prefix="model."))
    torch.testing.assert_close(model(x), trained(x))
    assert describe_model(ModelSpec(factory, str(path), strip_prefix="model."))["strip_prefix"]


def test_state_dict_under_a_nested_key(tmp_path):
    trained, other = mlp(seed=5), mlp(seed=6)
    path = tmp_path / "ckpt.pt"
    torch.save({"ema": {"weights": trained.state_dict()}, "model": other.state_dict()}, path)
    factory = "tests.pipelines.scoring_fixtures:mlp"
    model, _ = load_model(ModelSpec(factory, str(path), checkpoint_key="ema.weights"))
    x = torch.randn(4, 40)
    torch.testing.assert_close(model(x), trained(x))
    with pytest.raises(ValueError, match=r"has no key 'nope'; its keys: \['ema', 'model'\]"):
        load_model(ModelSpec(factory, str(path), checkpoint_key="nope"))
    torch.save({"ema": trained.state_dict(), "step": 3}, path)
    with pytest.raises(ValueError, match=r"holds a state_dict under 'ema'; pass --checkpoint-key"):
        load_model(ModelSpec(factory, str(path)))


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit the model .* missing .*body\.0\.weight"):
        load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))
    wide = {k: v for k, v in mlp().state_dict().items()}
    wide["classifier.bias"] = torch.zeros(11)
    torch.save(wide, path)
    with pytest.raises(ValueError, match=r"'classifier.bias': checkpoint \[11\], model \[10\]"):
        load_model(ModelSpec("tests.pipelines.scoring_fixtures:mlp", str(path)))
