"""Layer 1: model-agnostic numerics on any symmetric operator.

Inner products accurate at tens of millions of entries, the operator base class, Lanczos
(Algs. 1–2), NORMALIZATION (Alg. 4), densities (Alg. 3), KPM, LOWRANKDEFLATION (Alg. 5),
Krylov outliers, :func:`~hspec.numerics.spectrum.spectral_density` and its resumable
checkpoint, and the analysis of an estimated spectrum. Nothing here knows of networks.
"""
