"""hspec: the full eigenvalue spectrum of deep-network Hessians at scale.

Reproduces Papyan, "The Full Spectrum of Deep Net Hessians At Scale: Dynamics with
Sample Size": matrix-free curvature operators (Hessian, covariance of gradients,
averaged Hessian of predictions) and the paper's algorithms — FASTLANCZOS,
NORMALIZATION, LOWRANKDEFLATION, LANCZOSAPPROXSPEC (Algs. 1–5) and KPM.
"""

from hspec.curvature.block_spectra import block_spectra
from hspec.curvature.blocks import layer_blocks
from hspec.curvature.check import check
from hspec.curvature.operators import COMPONENTS, CurvatureOperator, curvature_operator
from hspec.errors import HspecError
from hspec.numerics.spectrum import METHODS, SpectralDensity, spectral_density
from hspec.version import __version__

__all__ = [
    "COMPONENTS",
    "METHODS",
    "CurvatureOperator",
    "HspecError",
    "SpectralDensity",
    "__version__",
    "block_spectra",
    "check",
    "curvature_operator",
    "layer_blocks",
    "spectral_density",
]
