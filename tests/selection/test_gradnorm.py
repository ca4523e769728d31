"""Ghost norms equal torch.func vmap(grad) norms (and a loop of backwards) on random models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from winnow.pipelines.toydata import MLP, SmallCNN
from winnow.selection import _ghost
from winnow.selection.gradnorm import per_example_grad_norms
from winnow.selection.losses import per_example_cross_entropy, sequence_loss

RTOL = 1e-4
# vmap over scaled_dot_product_attention has no batching rule on CPU (slow path, still exact).
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def ce(outputs, targets):
    return per_example_cross_entropy(outputs, targets)


def lm_loss(outputs, targets):
    return sequence_loss(outputs, targets, targets != 0)


class TinyTransformer(nn.Module):
    """Embedding + LayerNorm + hand-written attention (Linear q/k/v, 3-D inputs) + a library
    encoder layer (nn.MultiheadAttention, whose out_proj forward is bypassed) + LM head."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(10, dim) * 0.1)  # a bare parameter: fallback
        self.ln = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.ln(self.emb(ids) + self.pos[: ids.shape[1]])
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, dim=-1) @ self.v(h)
        return self.head(self.encoder(h + att))


class GhostOnlyTransformer(nn.Module):
    """Only layers with ghost rules, plus one unused layer (zero gradient, no fallback)."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.ln = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)
        self.unused = nn.Linear(dim, dim)

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, dim=-1) @ self.v(h)
        return self.head(h + att)


def _conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, padding_mode="reflect"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 2, dilation=2, padding="same", bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    ).eval()


def _conv3d_net():
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 4, (1, 3, 3), dilation=(1, 2, 1), groups=2, padding=(0, 2, 1)),
        nn.Flatten(),
        nn.Linear(4 * 4 * 3 * 3, 10),
    )


def _batch(kind, gen, b=12):
    if kind == "seq":
        ids = torch.randint(1, 40, (b, 10), generator=gen)
        ids[: b // 2, 7:] = 0  # padding
        return ids, torch.randint(0, 40, (b, 10), generator=gen)
    if kind == "img":
        return torch.randn(b, 3, 8, 8, generator=gen), torch.randint(0, 10, (b,), generator=gen)
    if kind == "vol":
        x = torch.randn(b, 2, 4, 6, 6, generator=gen)
        return x, torch.randint(0, 10, (b,), generator=gen)
    return torch.randn(b, 40, generator=gen), torch.randint(0, 10, (b,), generator=gen)


CASES = {
    "mlp": (lambda: MLP(), "vec", ce),
    "mlp_inplace": (
        lambda: nn.Sequential(nn.Linear(40, 32), nn.ReLU(inplace=True), nn.Linear(32, 10)),
        "vec",
        ce,
    ),
    "cnn1d": (lambda: SmallCNN(), "vec", ce),
    "cnn2d": (_conv_net, "img", ce),
    "cnn3d": (_conv3d_net, "vol", ce),
    "transformer": (lambda: TinyTransformer(), "seq", lm_loss),
    "ghost_transformer": (lambda: GhostOnlyTransformer(), "seq", lm_loss),
}


def _max_rel(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_ghost_equals_vmap(name):
    torch.manual_seed(hash(name) % 1000)
    make, kind, loss_fn = CASES[name]
    model = make()
    x, y = _batch(kind, torch.Generator().manual_seed(1))
    ghost, ghost_layers = per_example_grad_norms(model, loss_fn, x, y, per_layer=True)
    ref, ref_layers = per_example_grad_norms(model, loss_fn, x, y, per_layer=True, method="vmap")
    assert ghost.shape == (x.shape[0],)
    assert torch.all(ref > 0)
    assert _max_rel(ghost, ref) < RTOL
    assert ghost_layers.keys() == ref_layers.keys()
    for pname in ref_layers:
        torch.testing.assert_close(ghost_layers[pname], ref_layers[pname], rtol=RTOL, atol=1e-7)


def test_ghost_only_models_need_no_fallback():
    for name in ("mlp", "mlp_inplace", "cnn1d", "cnn2d", "cnn3d", "ghost_transformer"):
        make, kind, loss_fn = CASES[name]
        x, y = _batch(kind, torch.Generator().manual_seed(2), b=4)
        per_example_grad_norms(
            make(), loss_fn, x, y, method="ghost"
        )  # raises if it would fall back
    make, kind, loss_fn = CASES["transformer"]
    x, y = _batch(kind, torch.Generator().manual_seed(2), b=4)
    with pytest.raises(ValueError, match="pos"):
        per_example_grad_norms(make(), loss_fn, x, y, method="ghost")


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "explicit"])
@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "cnn3d", "ghost_transformer"])
def test_gram_and_explicit_forms_are_exact_in_any_chunking(monkeypatch, gram, name):
    """Each layer shape picks one form by its cost; force each, and split every matmul into
    chunks of a few examples, in float64 against the vmap reference."""
    monkeypatch.setattr(_ghost, "_gram_is_cheaper", lambda *shape: gram)
    monkeypatch.setattr(_ghost, "_CHUNK_ELEMENTS", 500)
    torch.manual_seed(0)
    make, kind, loss_fn = CASES[name]
    model = make().double()
    x, y = _batch(kind, torch.Generator().manual_seed(6), b=7)
    x = x.double() if x.is_floating_point() else x
    ghost = per_example_grad_norms(model, loss_fn, x, y, method="ghost")
    ref = per_example_grad_norms(model, loss_fn, x, y, method="vmap")
    torch.testing.assert_close(ghost, ref, rtol=1e-10, atol=0.0)


def test_matches_a_loop_of_single_backwards():
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = _batch("vec", torch.Generator().manual_seed(3), b=6)
    got = per_example_grad_norms(model, ce, x, y)
    for i in range(6):
        model.zero_grad()
        ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        expected = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
        assert got[i].item() == pytest.approx(expected.item(), rel=RTOL)


class _SharedUse(nn.Module):
    """One Linear applied twice, and an embedding tied to the output layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.mid(torch.tanh(self.mid(self.emb(ids)))))


def test_reused_modules_and_tied_weights_stay_exact():
    torch.manual_seed(0)
    model = _SharedUse()
    ids = torch.randint(0, 20, (5, 6))
    y = torch.randint(0, 20, (5, 6))
    ghost = per_example_grad_norms(model, lambda o, t: sequence_loss(o, t), ids, y)
    ref = per_example_grad_norms(model, lambda o, t: sequence_loss(o, t), ids, y, method="vmap")
    assert _max_rel(ghost, ref) < RTOL


class _SequenceFirst(nn.Module):
    """Linear layers applied to a [T, B, D] (sequence-first) tensor."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):  # x [B, T, 3]
        h = torch.tanh(self.mid(self.inp(x).transpose(0, 1)))  # [T, B, 8]
        return self.out(h.mean(0))


def test_layers_seeing_the_batch_elsewhere_fall_back_and_stay_exact():
    torch.manual_seed(0)
    model = _SequenceFirst()
    x, y = torch.randn(6, 5, 3), torch.randint(0, 4, (6,))
    with pytest.raises(ValueError, match="mid.weight"):
        per_example_grad_norms(model, ce, x, y, method="ghost")
    ghost = per_example_grad_norms(model, ce, x, y)
    assert _max_rel(ghost, per_example_grad_norms(model, ce, x, y, method="vmap")) < RTOL


def test_frozen_parameters_are_excluded_and_grads_untouched():
    torch.manual_seed(0)
    model = MLP()
    x, y = _batch("vec", torch.Generator().manual_seed(4), b=5)
    first = next(model.parameters())
    first.requires_grad_(False)
    _, layers = per_example_grad_norms(model, ce, x, y, per_layer=True)
    assert all(p.grad is None for p in model.parameters())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(layers) == names
    ref, _ = per_example_grad_norms(model, ce, x, y, per_layer=True, method="vmap")
    assert _max_rel(per_example_grad_norms(model, ce, x, y), ref) < RTOL


def test_chunked_vmap_equals_unchunked():
    torch.manual_seed(0)
    model = TinyTransformer()
    x, y = _batch("seq", torch.Generator().manual_seed(5), b=7)
    a = per_example_grad_norms(model, lm_loss, x, y, method="vmap", chunk_size=3)
    b = per_example_grad_norms(model, lm_loss, x, y, method="vmap", chunk_size=7)
    torch.testing.assert_close(a, b)


def test_train_mode_batchnorm_is_refused_and_eval_mode_works():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match=r"BatchNorm1d '1'.*model.eval\(\)"):
        per_example_grad_norms(model.train(), ce, x, y)
    model.eval()
    ghost = per_example_grad_norms(model, ce, x, y, method="ghost")
    assert _max_rel(ghost, per_example_grad_norms(model, ce, x, y, method="vmap")) < RTOL


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": lambda o, t: F.cross_entropy(o, t)}, ValueError, r"shape \[6\].*\(\)"),
        ({"targets": torch.zeros(5, dtype=torch.long)}, ValueError, "batch size 6"),
        ({"inputs": torch.zeros(0, 40)}, ValueError, "empty"),
        ({"method": "jacrev"}, ValueError, "jacrev"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"inputs": [1, 2]}, TypeError, "inputs"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"model": MLP(), "loss_fn": ce, "inputs": torch.randn(6, 40)}
    args["targets"] = torch.zeros(6, dtype=torch.long)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        per_example_grad_norms(**args)
