"""Layer 2: the curvature of a network's loss.

The losses: cross-entropy (also over sequences) with logit derivatives accurate when the
softmax saturates, squared error and a user's per-example loss (:mod:`~hspec.curvature.loss`);
parameter blocks (:mod:`~hspec.curvature.blocks`); the matrix-free H, G and R operators of any
model and batch structure (:mod:`~hspec.curvature.operators`, paper eq. 4) and the parts of
G by the class means (:mod:`~hspec.curvature.class_structure`, Papyan 2019/2020), dense exact
references for small problems (:mod:`~hspec.curvature.exact`) and sharded products
under torch.distributed (:mod:`~hspec.curvature.distributed`). Builds on
:mod:`hspec.numerics` only.
"""
