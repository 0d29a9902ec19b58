"""handgan: semi-supervised 3D hand pose estimation from single depth images with a
pose-conditioned DCGAN. The command line (``handgan``) is a thin layer over this API."""

__version__ = "0.1.0"

from handgan.camera import ICVL, MSRA, NYU, Intrinsics  # noqa: E402
from handgan.errors import HandganError  # noqa: E402

__all__ = ["__version__", "HandganError", "Intrinsics", "NYU", "ICVL", "MSRA"]
