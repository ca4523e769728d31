"""Fixtures for store tests: a fresh store in a temporary directory."""

import pytest

from winnow.store import ScoreStore


@pytest.fixture
def store(tmp_path):
    return ScoreStore(tmp_path / "store")
