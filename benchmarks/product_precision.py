"""How far a float32 H v is from float64's on a trained net (benchmarks/README.md).

Trains the model as bench.py does (class-structured CIFAR-shaped data for VGG11/ResNet18),
then reports for one random v: two float32 products against each other (determinism),
⟨u, H v⟩ against ⟨H u, v⟩ (symmetry) and the float32 product against the float64 one.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/product_precision.py --model vgg11 --n 32
"""

import argparse
import json

import torch

import bench
from hspec import curvature_operator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--separation", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x, y, _ = bench.load_data(args.model, args.n, 0, args.separation)
    x, y = x.to(device), y.to(device)
    model, info = bench.build_model(args.model, x, y, args.epochs, 1000, 0, device, args.lr)
    generator = torch.Generator().manual_seed(5)
    op = curvature_operator(model, (x, y), "hessian", batch_size=1000)
    u = torch.randn(op.dim, generator=generator).to(device)
    v = torch.randn(op.dim, generator=generator).to(device)
    hv, again, hu = op.matvec(v), op.matvec(v), op.matvec(u)
    exact = curvature_operator(model, (x, y), "hessian", batch_size=1000,
                               dtype=torch.float64).matvec(v.double())
    print(json.dumps({**info, "model": args.model, "n": args.n,
                      "repeat": float((hv - again).norm() / hv.norm()),
                      "symmetry": float(abs(u @ hv - hu @ v) / (u.norm() * hv.norm())),
                      "float32_vs_float64": float((hv.double() - exact).norm() / exact.norm())}))


if __name__ == "__main__":
    main()
