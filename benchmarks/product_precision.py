"""How far float32 curvature products are from float64's on a trained net (benchmarks/README.md).

Trains the model as bench.py does (class-structured CIFAR-shaped data for VGG11/ResNet18),
then reports how saturated its softmax is (quantiles of 1 − max_c p_c over the split) and,
for one random v and each component (H, G, R), the float32 product against the float64
one: through hspec's operators (hspec.curvature.loss, the shifted forms) and through the textbook
forms of the logit derivatives (p − e_y and p ⊙ (u − pᵀu), as in torch's cross_entropy).
Also two float32 H v against each other (determinism) and ⟨u, H v⟩ against ⟨H u, v⟩.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/product_precision.py --model vgg11 --n 32
"""

import argparse
import contextlib
import json
from unittest import mock

import bench
import torch

from hspec import curvature_operator
from hspec.curvature.operators import EQ4_COMPONENTS


def textbook_cross_entropy(logits, targets):
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def textbook_gradient(logits, targets):
    g = torch.softmax(logits.detach(), dim=-1)
    g[torch.arange(len(targets), device=g.device), targets] -= 1
    return g


def textbook_hessian_product(logits, u):
    prob = torch.softmax(logits.detach(), dim=-1)
    return prob * u - prob * (prob * u).sum(-1, keepdim=True)


@contextlib.contextmanager
def textbook_forms():
    """hspec's operators with the logit derivatives of the textbook (cancelling) forms."""
    with mock.patch.multiple(
        "hspec.curvature.loss",
        cross_entropy=textbook_cross_entropy,
        logit_gradient=textbook_gradient,
        logit_hessian_product=textbook_hessian_product,
    ):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--separation", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--hvp", default="auto")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x, y, _ = bench.load_data(args.model, args.n, 0, args.separation)
    x, y = x.to(device), y.to(device)
    model, info = bench.build_model(args.model, x, y, args.epochs, 1000, 0, device, args.lr)
    with torch.no_grad():
        gap = 1 - torch.softmax(model(x).double(), dim=-1).max(-1).values
    quantiles = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device=device)
    info["one_minus_max_p"] = dict(
        zip(("min", "median", "max"), map(float, gap.quantile(quantiles)))
    )
    generator = torch.Generator().manual_seed(5)
    kwargs = {"batch_size": 1000, "hvp": args.hvp}
    op = curvature_operator(model, (x, y), "hessian", **kwargs)
    u = torch.randn(op.dim, generator=generator).to(device)
    v = torch.randn(op.dim, generator=generator).to(device)
    hv, again, hu = op.matvec(v), op.matvec(v), op.matvec(u)
    info["repeat"] = float((hv - again).norm() / hv.norm())
    info["symmetry"] = float(abs(u @ hv - hu @ v) / (u.norm() * hv.norm()))
    for component in EQ4_COMPONENTS:
        exact = curvature_operator(model, (x, y), component, dtype=torch.float64, **kwargs).matvec(
            v.double()
        )
        for form, context in (("hspec", contextlib.nullcontext), ("textbook", textbook_forms)):
            with context():
                product = curvature_operator(model, (x, y), component, **kwargs).matvec(v)
            info[f"{component}_{form}_float32_vs_float64"] = float(
                (product.double() - exact).norm() / exact.norm()
            )
    print(json.dumps({"model": args.model, "n": args.n, "hvp": op.hvp, **info}))


if __name__ == "__main__":
    main()
