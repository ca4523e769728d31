"""The math of data selection: per-example scores and choosers. Arrays in, arrays out."""

__all__: list[str] = []
