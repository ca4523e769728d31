"""The score store: Parquet files on disk, DuckDB views for SQL."""

__all__: list[str] = []
