import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def root() -> Path:
    return ROOT

# Property tests are deterministic: the same examples every run (a failure found once is found again),
# and no example database written into the repository.
from hypothesis import settings as _hsettings

_hsettings.register_profile("heed", derandomize=True, database=None, deadline=None)
_hsettings.load_profile("heed")
