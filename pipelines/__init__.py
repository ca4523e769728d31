"""Jobs and entry points: the Ray scoring job, embeddings, demo, report and the `winnow` CLI."""

__all__: list[str] = []
