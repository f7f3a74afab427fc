"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Run every test in its own temporary directory, so results folders written to the
    default relative ``results`` land there, not in the repository."""
    monkeypatch.chdir(tmp_path)
