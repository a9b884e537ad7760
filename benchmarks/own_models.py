"""Benchmark: hspec's operators on a researcher's own model (issue 12), side by side.

Three tables, CPU, float32 unless said otherwise:

1. **Agreement with curvlinops-for-pytorch** (``HessianLinearOperator``,
   ``GGNLinearOperator``) on the same model, data and loss: an MLP classifier under
   cross-entropy, an MLP regressor under mean squared error, and a classifier whose batches
   are dicts (HuggingFace style; curvlinops takes them with a ``batch_size_fn``), for the
   whole model and for one parameter block. hspec's ``"mse"`` is the mean over examples of
   ``((out − target)**2).sum(-1)``, i.e. curvlinops' ``MSELoss(reduction="sum")`` divided by
   N. Reported: max over a few random vectors of ‖A_hspec v − A_curvlinops v‖ / ‖A_curvlinops v‖,
   in float32 and float64 (float32 rounding is ~1e-6; float64 shows the two are the same
   matrix).
2. **Per-block cost**: for each layer block of the digits CNN (hspec.pipeline.models.cnn)
   the seconds of one H v on the block against one H v on the whole model (median of
   repeats). A block product differentiates only through what the block influences, so
   it must not cost more than the full product.
3. **Causal LMs** (two blocks): one H v, G v and R v (sequence cross-entropy, ignore
   index) against one gradient, whole model and per block, for the tiny one (width 32) and
   H v for a wider one (width 128, 417k parameters).

    python benchmarks/own_models.py                      # writes results-cpu-own-models.*
    python benchmarks/own_models.py --repeats 3 --out /tmp/r.json --md /tmp/r.md

Timings are medians of ``--repeats`` runs after one warm-up, with ``torch.set_num_threads``
as given (default 1: the shared machines' honest setting).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from hspec import curvature_operator
from hspec.curvature.blocks import layer_blocks, select_parameters
from hspec.pipeline import models
from hspec.pipeline.transformer import TinyCausalLM, synthetic_tokens

HERE = Path(__file__).resolve().parent


# -- the models ------------------------------------------------------------------------
def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, outputs))  # fmt: skip


class DictClassifier(nn.Module):
    """A classifier called as ``model(input_ids=..., attention_mask=...)`` (HuggingFace style):
    mean of the embedded tokens under the mask, then a linear head."""

    def __init__(self, vocab: int = 20, width: int = 16, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return self.head(torch.tanh(pooled))


class CurvlinopsDict(nn.Module):
    """curvlinops calls ``model(X)`` with the dict X: unpack it as keyword arguments."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**batch)


def cases(n: int, seed: int):
    """(name, model, hspec data, hspec loss, curvlinops model, curvlinops batches,
    curvlinops loss, curvlinops scale, params regex) for table 1."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    classifier, regressor, dict_model = mlp(10, 5), mlp(10, 3), DictClassifier()
    y_class = torch.randint(0, 5, (n,), generator=g)
    y_reg = torch.randn(n, 3, generator=g)
    ids = torch.randint(0, 20, (n, 7), generator=g)
    mask = (torch.rand(n, 7, generator=g) > 0.2).long()
    mask[:, 0] = 1
    y_dict = torch.randint(0, 4, (n,), generator=g)
    dict_batches = [
        {"input_ids": i, "attention_mask": m, "labels": t}
        for i, m, t in zip(ids.split(32), mask.split(32), y_dict.split(32))
    ]
    return [
        ("mlp, cross-entropy", classifier, (x, y_class), "cross_entropy", classifier,
         list(zip(x.split(32), y_class.split(32))), nn.CrossEntropyLoss(), 1.0, r"4\..*"),
        ("mlp, mse", regressor, (x, y_reg), "mse", regressor,
         list(zip(x.split(32), y_reg.split(32))), nn.MSELoss(reduction="sum"), 1.0 / n,
         r"2\..*"),
        ("dict batches, cross-entropy", dict_model, dict_batches, "cross_entropy",
         CurvlinopsDict(dict_model),
         [({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"])
          for b in dict_batches],
         nn.CrossEntropyLoss(), 1.0, r"head\..*"),
    ]  # fmt: skip


# -- table 1: curvlinops ---------------------------------------------------------------
def curvlinops_operator(kind: str, model, batches, loss, names: list[str], n: int):
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    cls = HessianLinearOperator if kind == "hessian" else GGNLinearOperator
    named = dict(model.named_parameters())
    prefix = "model." if isinstance(model, CurvlinopsDict) else ""
    params = [named[prefix + name] for name in names]
    dict_input = isinstance(batches[0][0], dict)
    return cls(
        model, loss, params, batches, check_deterministic=False, num_data=n,
        batch_size_fn=(lambda X: X["input_ids"].shape[0]) if dict_input else None,
    )  # fmt: skip


def agreement(case, dtype: torch.dtype, vectors: int, seed: int) -> dict:
    name, model, data, loss, cl_model, cl_batches, cl_loss, scale, block = case
    model.to(dtype)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t
    if isinstance(data, tuple):
        data = tuple(cast(t) for t in data)
    else:
        data = [{k: cast(t) for k, t in b.items()} for b in data]
    cl_batches = [
        ({k: cast(t) for k, t in X.items()} if isinstance(X, dict) else cast(X), cast(y))
        for X, y in cl_batches
    ]
    n = sum(len(y) for _, y in cl_batches)
    row = {"case": name, "dtype": str(dtype).removeprefix("torch."), "n": n}
    for label, params in (("whole", None), ("block", block)):
        names = select_parameters(model, params)
        for kind, component in (("H", "hessian"), ("G", "gradient_covariance")):
            size = {"batch_size": 32} if isinstance(data, tuple) else {}  # dicts: as given
            ours = curvature_operator(model, data, component, loss=loss, params=params,
                                      dtype=dtype, **size)  # fmt: skip
            theirs = curvlinops_operator(
                "hessian" if kind == "H" else "ggn", cl_model, cl_batches, cl_loss, names, n
            )
            g = torch.Generator().manual_seed(seed)
            worst = 0.0
            for _ in range(vectors):
                v = torch.randn(ours.dim, generator=g, dtype=dtype)
                a = ours.matvec(v)
                b = (theirs @ v) * scale
                worst = max(worst, float((a - b).norm() / b.norm()))
            row[f"{kind} {label}"] = worst
        row[f"p {label}"] = ours.dim
    model.float()
    return row


# -- tables 2 and 3: timings -----------------------------------------------------------
def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_seconds(model, loss_of: Callable[[], torch.Tensor], repeats: int) -> float:
    def once():
        model.zero_grad(set_to_none=True)
        loss_of().backward()

    return median_seconds(once, repeats)


def block_rows(model, data, loss, repeats: int, components=("hessian",), batch_size=None):
    """One row per block (the whole model first): seconds per product (median) and ratio
    to the whole model's product. The products are timed round-robin, one of each block in
    turn per repeat, so that a shared machine's drifting load falls on all alike."""
    blocks = {"(whole model)": None} | layer_blocks(model)
    rows = []
    for component in components:
        ops = {
            name: curvature_operator(
                model, data, component, loss=loss, params=params, batch_size=batch_size
            )  # fmt: skip
            for name, params in blocks.items()
        }
        vectors = {
            name: torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
            for name, op in ops.items()
        }
        times = {name: [] for name in ops}
        for name, op in ops.items():
            op.matvec(vectors[name])  # warm-up (and the first pass's checks)
        for _ in range(repeats):
            for name, op in ops.items():
                start = time.perf_counter()
                op.matvec(vectors[name])
                times[name].append(time.perf_counter() - start)
        whole = statistics.median(times["(whole model)"])
        for row, (name, op) in zip_rows(rows, ops):
            seconds = statistics.median(times[name])
            row.update({"p": op.dim, f"{component} s": seconds,
                        f"{component} ratio": seconds / whole})  # fmt: skip
    return rows


def zip_rows(rows: list, ops: dict):
    """(row, (name, op)) per block, the rows made on the first component."""
    if not rows:
        rows.extend({"block": name} for name in ops)
    return zip(rows, ops.items())


def cnn_blocks(repeats: int) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:512], dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target[:512])
    torch.manual_seed(0)
    model = models.create("cnn", 1, 10)
    loss_of = lambda: nn.functional.cross_entropy(model(x), y)
    return {
        "model": "cnn (digits, 512 examples)",
        "gradient s": gradient_seconds(model, loss_of, repeats),
        "rows": block_rows(model, (x, y), "cross_entropy", repeats),
    }


def transformer_blocks(
    repeats: int, width=32, context=8, vocab=16, components=("hessian", "gradient_covariance",
                                                              "prediction_hessian"),
) -> dict:  # fmt: skip
    """Per-block rows of a causal LM of two blocks: the tiny one (27k parameters, every
    component, 30-50 ms products, where per-operation overheads weigh) and, at width 128
    (417k), H alone (where arithmetic does)."""
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=vocab, context=context, width=width, heads=2, layers=2)
    batch = synthetic_tokens(64, context, vocab, seed=0)
    inputs, targets = batch["input_ids"], batch["labels"]
    loss_of = lambda: nn.functional.cross_entropy(
        model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    return {
        "model": f"causal LM, width {width} ({sum(p.numel() for p in model.parameters()):,} "
        f"params, {tuple(inputs.shape)} tokens)",
        "gradient s": gradient_seconds(model, loss_of, repeats),
        "rows": block_rows(model, (inputs, targets), "cross_entropy", repeats, components),
    }


# -- output ----------------------------------------------------------------------------
def _num(value, digits=3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


def markdown(result: dict) -> str:
    lines = [
        "# Own models: curvlinops agreement, per-block cost, the tiny transformer (CPU)",
        "",
        f"{result['machine']}; torch {result['versions']['torch']}, curvlinops "
        f"{result['versions']['curvlinops']}; {result['threads']} thread(s); medians of "
        f"{result['repeats']} runs. Produced by `python benchmarks/own_models.py`.",
        "",
        "## Agreement with curvlinops (max relative difference over random vectors)",
        "",
        "| case | dtype | p whole | H whole | G whole | p block | H block | G block |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["agreement"]:
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['p whole']} | {_num(r['H whole'])} | "
            f"{_num(r['G whole'])} | {r['p block']} | {_num(r['H block'])} | "
            f"{_num(r['G block'])} |"
        )
    for table in result["blocks"]:
        comps = [k.removesuffix(" s") for k in table["rows"][0] if k.endswith(" s")]
        lines += [
            "",
            f"## Per-block products: {table['model']}; one gradient: {_num(table['gradient s'])} s",
            "",
            "| block | p | " + " | ".join(f"{c} s | ×whole" for c in comps) + " |",
            "|---|---|" + "---|---|" * len(comps),
        ]
        for r in table["rows"]:
            cells = " | ".join(f"{_num(r[c + ' s'])} | {_num(r[c + ' ratio'], 2)}" for c in comps)
            lines.append(f"| {r['block']} | {r['p']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="examples of the agreement cases")
    parser.add_argument("--vectors", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results-cpu-own-models.json")
    parser.add_argument("--md", type=Path, default=HERE / "results-cpu-own-models.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "versions": {"torch": torch.__version__, "curvlinops": version("curvlinops-for-pytorch")},
        "threads": args.threads,
        "repeats": args.repeats,
        "agreement": [
            agreement(case, dtype, args.vectors, args.seed)
            for dtype in (torch.float32, torch.float64)
            for case in cases(args.n, args.seed)
        ],
        "blocks": [
            cnn_blocks(args.repeats),
            transformer_blocks(args.repeats),
            transformer_blocks(
                args.repeats, width=128, context=32, vocab=64, components=("hessian",)
            ),
        ],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.md.write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
