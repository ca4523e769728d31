"""``winnow bench``: the time-to-accuracy benchmark of every selection method on MNIST-1D.

``main(argv)`` is the command (also ``python -m winnow.pipelines.bench``); ``outcomes`` holds
the driver, ``_engine`` the shared task, recipe and accounting, ``_methods`` one function per
method, ``_summary`` the table and plots, ``_store`` the optional score-store output. Importing
this package imports neither torch nor matplotlib; the benchmark needs the ``demo`` extra.
"""

from __future__ import annotations

from winnow.pipelines.bench.outcomes import build_parser, main

__all__ = ["main", "build_parser"]
