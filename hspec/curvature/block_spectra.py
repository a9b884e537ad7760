"""One spectrum per parameter block: the diagonal blocks H_BB (or G_BB, R_BB) of a network.

For a partition of the parameters into blocks B (per layer by default,
:func:`hspec.curvature.blocks.layer_blocks`), the operator of block B acts on the
parameters of B alone, every other parameter held fixed: it is the diagonal block A_BB
of the whole curvature matrix A (``curvature_operator(..., params=B)``), and its
spectrum is the one of that block — not the restriction of A's spectrum to B. Each
block's product costs one forward and backward pass of the whole network, as a product
of A does, with derivatives taken for B's parameters only.
"""

import inspect
from collections.abc import Iterator, Mapping

from torch import nn

from hspec.curvature.blocks import layer_blocks
from hspec.curvature.operators import CurvatureOperator, curvature_operator
from hspec.errors import HspecError
from hspec.numerics.spectrum import SpectralDensity, spectral_density


def block_operators(
    model: nn.Module, data, component: str = "hessian", blocks: Mapping | None = None, **options
) -> Iterator[tuple[str, CurvatureOperator]]:
    """(name, operator of the block) for each block, built one at a time (a resident
    operator holds its copy of the data only while it is used).

    Args:
        blocks: block name -> a ``params`` selector of :func:`curvature_operator` (a list
            of parameter names, a regular expression, a list of modules); None: one block
            per layer, :func:`layer_blocks`.
        options: keywords of :func:`curvature_operator` (loss, forward, batch_size, ...).
    """
    selected = layer_blocks(model) if blocks is None else dict(blocks)
    if not selected:
        raise HspecError("blocks: no block to compute (the model has no trainable parameter?)")
    for name, params in selected.items():
        yield name, curvature_operator(model, data, component, params=params, **options)


def block_spectra(
    model: nn.Module, data, component: str = "hessian", blocks: Mapping | None = None, **options
) -> dict[str, SpectralDensity]:
    """The spectral density of every diagonal block A_BB of a curvature matrix A.

    ``spectral_density(operator of B, ...)`` per block B (:func:`block_operators`;
    ``blocks`` as there, per layer by default), in the blocks' order. Each result's
    ``dim`` is the block's size. The per-block spectra are not pieces of A's: by Cauchy
    interlacing λ_min(A) ≤ λ(A_BB) ≤ λ_max(A), and Σ_B tr A_BB = tr A over a partition.

    Args:
        component: as for :func:`curvature_operator`.
        options: keywords of :func:`curvature_operator` (``loss``, ``forward``,
            ``batch_size``, ``dtype``, ``device``, ``hvp``, ...) go to every block's
            operator; the others to :func:`hspec.spectral_density` (``method``, ``steps``,
            ``deflate``, ``seed``, ...), the same for every block.
    """
    operator_keys = set(inspect.signature(curvature_operator).parameters) - {"params"}
    operator = {key: value for key, value in options.items() if key in operator_keys}
    spectrum = {key: value for key, value in options.items() if key not in operator_keys}
    return {
        name: spectral_density(op, **spectrum)
        for name, op in block_operators(model, data, component, blocks, **operator)
    }
