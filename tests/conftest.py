"""Fixtures shared by the test modules."""
import pytest

from handgan.inference import Estimator

from helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint from random networks (``helpers.save_tiny_checkpoint``)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def est(ckpt):
    """The tiny checkpoint's estimator, on the CPU."""
    return Estimator.from_checkpoint(ckpt, device="cpu")
