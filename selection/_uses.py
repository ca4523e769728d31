"""Which parameters reach the loss only through the layer calls the ghost rules see.

A ghost rule turns one layer call's (input, output gradient) into per-example norms of that
layer's parameters. That is exact only when the call is the parameter's *only* path to the loss:
a weight also used elsewhere (tied to the logits as ``h @ emb.weight.T``, passed to
``F.linear``, read directly by a parent module as ``nn.MultiheadAttention`` does with
``out_proj.weight``, a regulariser in the loss) gets gradient the rule never sees, and its ghost
norm would come out silently too small.

The autograd graph of the forward says exactly which uses pass gradient: every operation that
can send gradient to a parameter holds an edge to that parameter's gradient accumulator
(``AccumulateGrad``), whatever produced it (a method, an operator, a view such as ``.T``, a
custom ``autograd.Function``, ``torch.ops.aten.*``, TorchScript, an in-place copy into another
tensor). So after the forward, ``accumulator_edges`` walks the graph from the loss once and
counts, per parameter, the edges reaching its accumulator; walking again from a layer's output
down to its input counts the edges made inside that layer's call. A parameter keeps its rule iff
all its edges reachable from the loss (exactly one) come from its layer's single call
(docs/gradient-norms.md). Uses that cannot pass gradient (``.shape``, ``.detach()``, anything
under ``no_grad``) make no edge and cost nothing; uses whose result never reaches the loss are
not reachable from it and pass no gradient either.

Why this and not the alternatives. A numerical check (compare, per parameter, the batch-summed
gradient the captures imply with autograd's) needs every weight gradient in the backward, which
the ghost pass otherwise skips, and a tolerance decides what "mismatch" means: on the
40-512-512-10 MLP, batch 256, one thread, the backward to the layer outputs alone took 0.59x a
plain training step, with the weight gradients requested too 0.91x, before forming anything. A
``TorchFunctionMode`` counting every torch call that receives a parameter (the first version
here) cost a Python call per op of the forward, 2.9 us each, including the ops of the hooks,
and had to guess from the results whether a call passes gradient. The graph walk visits each
node once in Python (``benchmarks/bench_gradnorm.py`` reports its cost per model, column
``walk``).
"""

from __future__ import annotations

from collections import Counter

import torch

__all__ = ["accumulator_edges"]

_AccumulateGrad = torch._C._functions.AccumulateGrad


def accumulator_edges(root, tracked: set[int], *, stop=None) -> tuple[Counter[int], set]:
    """Edges into the accumulators of the tracked parameters below the autograd node ``root``.

    ``tracked``: ``id(parameter)`` of the parameters to count. The walk does not descend below
    ``stop`` (a layer's input node, to count only the edges made inside the layer's call).
    Returns ``({id(parameter): edges}, visited nodes)``; ``root=None`` gives empty ones.
    """
    counts: Counter[int] = Counter()
    if root is None:
        return counts, set()
    seen = {root}
    stack = [root]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None or child is stop:
                continue
            if type(child) is _AccumulateGrad:
                key = id(child.variable)
                if key in tracked:
                    counts[key] += 1
            elif child not in seen:
                seen.add(child)
                stack.append(child)
    return counts, seen
