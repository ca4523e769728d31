"""PyTorch integration: epoch samplers and in-step batch selectors."""

__all__: list[str] = []
