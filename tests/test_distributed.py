"""Data-parallel products over 2 processes (gloo, CPU) equal the single-process ones."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hspec import HspecError, curvature_operator, spectral_density
from hspec.curvature.distributed import shard

SETTINGS = dict(deflate=3, iterations=20, steps=30, bound_steps=16)


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    )
    model.eval()
    x, y = torch.randn(45, 1, 8, 8), torch.randint(0, 3, (45,))
    v = torch.randn(
        sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(1)
    )
    return model, x, y, v


def results(model, data, distributed):
    out = {}
    components = ("hessian", "gradient_covariance", "prediction_hessian")
    for component in components + ("class_g1", "class_within"):  # the classes split by ranks
        op = curvature_operator(model, data, component, batch_size=8, distributed=distributed)
        out[component] = op.matvec(problem()[3])
    spectrum = spectral_density(
        curvature_operator(model, data, "hessian", distributed=distributed), **SETTINGS
    )
    out["outliers"] = torch.from_numpy(spectrum.outliers)
    out["density"] = torch.from_numpy(spectrum.density)
    return out


def worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model, x, y, _ = problem()
    found = results(model, shard(x, y, rank, 2), distributed=True)
    if rank == 0:
        torch.save(found, out_file)
    dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2)
    distributed = torch.load(tmp_path / "out.pt", weights_only=True)
    model, x, y, _ = problem()
    single = results(model, (x, y), distributed=False)
    for name, expected in single.items():
        got = distributed[name]
        scale = expected.abs().max()
        assert float((got - expected).abs().max() / scale) <= 1e-6, name


def test_distributed_needs_a_process_group():
    model, x, y, _ = problem()
    with pytest.raises(HspecError, match="distributed"):
        curvature_operator(model, (x, y), distributed=True)
