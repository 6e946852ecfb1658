"""Shared pytest fixtures.

The paper's dataset is read from RLAIF_DATA_DIR (CI points it at the mirror); tests that need it
are skipped with a clear reason when it is not set.
"""
import os
import pathlib

import pytest


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  value = os.environ.get("RLAIF_DATA_DIR")
  if not value:
    pytest.skip("RLAIF_DATA_DIR is not set; point it at the greetings dataset directory")
  path = pathlib.Path(value)
  if not path.is_dir():
    pytest.fail(f"RLAIF_DATA_DIR={value} is not a directory")
  return path
