"""Shared pytest fixtures: fixture folders from ../shared and the golden weight recipe."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fixture_dir(env_var: str, default: Path, marker_file: str) -> Path:
    """Folder from ``env_var`` (else ``default``); skip when absent, fail when ``CI`` is set."""
    folder = Path(os.environ.get(env_var, default)).expanduser()
    if not (folder / marker_file).is_file():
        message = f"fixture folder {folder} not found (set {env_var})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _fixture_dir("THREEDPE_GOLDEN_DIR", ROOT.parent / "shared" / "golden", "manifest.json")


@pytest.fixture(scope="session")
def alignment_dir() -> Path:
    return _fixture_dir("THREEDPE_ALIGNMENT_DIR", ROOT.parent / "shared" / "alignment", "mtcnn_golden.json")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A folder written by ``python -m threedpe tiny-weights`` (untrained editor, small EG3D, tiny IP2P)."""
    from threedpe.tiny import save_tiny_weights

    return save_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def astronaut_photo(tmp_path_factory) -> Path:
    """The public-domain astronaut portrait (scikit-image), as a raw (unaligned) PNG."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small models run faster so, and two processes share the 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
