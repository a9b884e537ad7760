"""Layer 2: the curvature of a network's loss.

Cross-entropy and its logit derivatives (:mod:`~hspec.curvature.loss`), the matrix-free
H, G and R operators (:mod:`~hspec.curvature.operators`, paper eq. 4) and the parts of
G by the class means (:mod:`~hspec.curvature.class_structure`, Papyan 2019/2020), dense exact
references for small problems (:mod:`~hspec.curvature.exact`) and sharded products
under torch.distributed (:mod:`~hspec.curvature.distributed`). Builds on
:mod:`hspec.numerics` only.
"""
