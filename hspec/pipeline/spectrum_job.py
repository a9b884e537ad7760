"""The ``hspec spectrum`` job: a trained model's curvature spectrum on one split (Section 3.2).

Orchestration only: model and data from :mod:`~hspec.pipeline.run_files` and
:mod:`~hspec.pipeline.data`, the operator from :mod:`hspec.curvature.operators`, the
estimate from :func:`hspec.numerics.spectrum.spectral_density`, the result into
:mod:`~hspec.pipeline.store`. The command line parses the options and calls :func:`run`.
"""

import hashlib
import sys
from pathlib import Path

import torch

from hspec.curvature import distributed
from hspec.curvature.attribution import spectrum_attribution
from hspec.curvature.block_spectra import block_operators
from hspec.curvature.operators import PRECISIONS, curvature_operator
from hspec.errors import HspecError
from hspec.numerics.spectrum import spectral_density
from hspec.pipeline import data, devices, run_files, store


def run(args) -> None:
    """One ``hspec spectrum`` job: ``args`` holds its options (see ``hspec spectrum --help``).

    Refuse an ``--out`` hspec did not write; load the model (its classes and channels
    must fit the dataset) and the split (restricted to ``--indices``); build the
    curvature operator on this rank's shard; run :func:`spectral_density` with a
    checkpoint next to OUT keyed by :func:`identity`; rank 0 writes the Zarr group; the
    checkpoint is removed once the result is stored. The group's ``provenance`` adds to
    the result's (:func:`provenance`) the model file's sha256 and its training settings.

    ``--params REGEX``: the operator of that block alone (its attrs record ``block`` and
    ``param_names``). ``--blocks [NAME=REGEX ...]``: one spectrum per block (per layer
    without values), written as one blocks group (:func:`_run_blocks`). The loss is the
    model's (its metadata's ``loss``), a dataset factory's split comes from the factory.
    A spectrum of H or G of a classifier under cross-entropy on one process, of the whole
    model, also stores its class-structure attribution
    (:func:`hspec.curvature.attribution.spectrum_attribution`: the outliers against the
    eigenvalues of G1 and G0 + G1 + G2, the trace shares), printed with the result."""
    blocks = parse_blocks(args.blocks)
    check_out(args.out, "spectrum" if blocks is None else "blocks")
    rank, world = distributed.init_from_env(args.device if args.device != "auto" else None)
    device = distributed.local_device(str(devices.resolve(args.device)))
    model, metadata, inputs, targets, indices = load(args, device)
    if args.deflate == "classes":
        args.deflate = int(metadata["num_classes"])
    n_per_class = args.n_per_class or (
        int(torch.bincount(targets).max()) if indices is not None else "full"
    )
    shard = distributed.shard(inputs, targets, rank, world)
    loss = metadata.get("loss", "cross_entropy")  # no loss recorded: a paper net's
    options = dict(
        batch_size=args.batch_size,
        device=device,
        distributed=world > 1,
        hvp=args.hvp,
        resident=args.resident,
        compile=args.compile,
        **PRECISIONS[args.precision],
        loss=loss,
    )
    key = identity(args, indices, targets, rank, world)
    attrs = {
        "component": args.component,
        "split": args.split,
        "dataset": args.dataset,
        "arch": metadata["arch"],
        "n_per_class": _per_class_value(n_per_class),
        "n_samples": len(targets),
        "model": str(args.model),
        "world_size": world,
        "precision": args.precision,
        "compile": args.compile,
        "resident": args.resident,
        "loss": loss,
        "provenance": provenance(key["model"], metadata),
    }
    if blocks is not None:
        _run_blocks(args, model, shard, blocks, options, key, attrs, rank)
        return
    if args.params:
        options["params"] = args.params
    op = curvature_operator(model, shard, args.component, **options)
    checkpoint = args.out.with_name(args.out.name + f".rank{rank}.ckpt")
    result = _estimate(args, op, checkpoint, key)
    attribution = None
    attributed = args.component in ATTRIBUTED and loss == "cross_entropy" and targets.ndim == 1
    if attributed and world == 1 and not args.params:
        attribution = spectrum_attribution(
            result,
            op,
            model,
            (inputs, targets),
            batch_size=args.batch_size,
            device=device,
            dtype=PRECISIONS[args.precision]["dtype"],
            seed=args.seed,
        )
    if rank == 0:
        block = {"block": args.params, "param_names": op.param_names} if args.params else {}
        store.write_spectrum(args.out, result, {**attrs, "hvp": op.hvp, **block}, attribution)
        print(
            f"wrote {args.out}: range [{result.lambda_min:.4g}, {result.lambda_max:.4g}], "
            f"{len(result.outliers)} outliers, {result.hvp_count} products in {result.seconds:.1f} s"
        )
        if attribution is not None:
            print(attribution_line(attribution))
    checkpoint.unlink(missing_ok=True)


def load(args, device):
    """The model of ``--model`` on ``device`` (its classes and channels must fit
    ``--dataset``, or it must come with ``--dataset-factory``) and the ``--split`` (from the
    factory if one is given), restricted to ``--indices``: (model, metadata, inputs,
    targets, indices or None)."""
    factory = getattr(args, "dataset_factory", None)
    if factory:
        expect = {"dataset": args.dataset, "dataset_factory": factory}
    else:
        stats = data.spec(args.dataset)
        expect = {
            "dataset": args.dataset,
            "num_classes": stats.num_classes,
            "in_channels": stats.in_channels,
        }
    model, metadata = run_files.load_model(args.model, device=device, expect=expect)
    inputs, targets = data.load_dataset(
        args.dataset, args.split, args.data_dir, args.download, factory
    )
    indices = None
    if args.indices is not None:
        if args.split != "train":
            raise HspecError("--indices: only the train split is subsampled")
        indices = data.load_indices(args.indices, size=len(targets))
        index = torch.from_numpy(indices)
        inputs, targets = inputs[index], targets[index]
    return model, metadata, inputs, targets, indices


#: the job's options that go to :func:`spectral_density` as they are (``hspec check`` too)
ESTIMATE_OPTIONS = (
    "method",
    "deflate",
    "steps",
    "bound_steps",
    "margin",
    "points",
    "n_vec",
    "iterations",
    "deflation",
    "reorth",
    "k",
    "seed",
)


def _estimate(args, op, checkpoint: Path, key: dict):
    """:func:`spectral_density` of ``op`` with the job's options, resumable from ``checkpoint``."""
    return spectral_density(
        op,
        **{name: getattr(args, name) for name in ESTIMATE_OPTIONS},
        progress=not args.quiet and sys.stderr.isatty(),
        checkpoint=checkpoint,
        checkpoint_interval=args.checkpoint_interval,
        checkpoint_key=key,
    )


def _run_blocks(args, model, shard, blocks, options, key, attrs, rank) -> None:
    """``--blocks``: one spectrum per block (:func:`block_operators`), each resumable from
    its own checkpoint ``OUT.<block>.rank<R>.ckpt``; the blocks group is written once all
    are done (:func:`hspec.pipeline.store.write_blocks`), then the checkpoints removed."""
    results, checkpoints = {}, []
    for name, op in block_operators(model, shard, args.component, blocks or None, **options):
        checkpoints.append(args.out.with_name(f"{args.out.name}.{name}.rank{rank}.ckpt"))
        block_key = {**key, "block": name, "param_names": list(op.param_names)}
        result = _estimate(args, op, checkpoints[-1], block_key)
        block = {"block": name, "param_names": op.param_names, "hvp": op.hvp}
        results[name] = (result, {**attrs, **block})
        print(
            f"block {name}: {result.dim} parameters, range [{result.lambda_min:.4g}, "
            f"{result.lambda_max:.4g}], {result.hvp_count} products in {result.seconds:.1f} s"
        )
    if rank == 0:
        names = {name: block["param_names"] for name, (_, block) in results.items()}
        store.write_blocks(args.out, results, {**attrs, "param_names": names})
        print(f"wrote {args.out}: {len(results)} blocks")
    for checkpoint in checkpoints:
        checkpoint.unlink(missing_ok=True)


def parse_blocks(values) -> dict | None:
    """``--blocks [NAME=REGEX ...]``: None without the option, {} for one block per layer
    (the option alone), else {NAME: REGEX}; a value without ``=`` is one HspecError."""
    if values is None:
        return None
    blocks = {}
    for value in values:
        name, sep, pattern = value.partition("=")
        if not sep or not name or not pattern:
            raise HspecError(f"--blocks: {value!r} is not NAME=REGEX")
        if not store.BLOCK_NAME.match(name):
            raise HspecError(f"--blocks: block name {name!r} must be [A-Za-z0-9_.-]")
        blocks[name] = pattern
    return blocks


def check_out(out: Path, kind: str = "spectrum") -> None:
    """Before any computation: refuse an --out that hspec did not write (a ``kind``
    group), and create its parent directory (where the checkpoint goes too)."""
    store.check_overwritable(out, kind)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HspecError(f"--out {out}: cannot create its directory ({error})") from error


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def identity(args, indices, targets: torch.Tensor, rank: int, world: int) -> dict:
    """What a spectrum checkpoint must match to be resumed: the model file, the data, the operator."""
    return {
        "model": sha256(args.model),
        "dataset": args.dataset,
        "split": args.split,
        "subset": data.fingerprint(indices),
        "targets": "sha256:" + hashlib.sha256(targets.cpu().numpy().tobytes()).hexdigest(),
        "component": args.component,
        "precision": args.precision,
        "rank": rank,
        "world_size": world,
        **({"params": args.params} if args.params else {}),
    }


#: the components whose spectra get a class-structure attribution
ATTRIBUTED = ("hessian", "gradient_covariance")


def attribution_line(attribution: dict) -> str:
    """The attribution in one line: outliers explained by G1 and by G0 + G1 + G2 (of C,
    within rtol) with the largest relative error, and the shares of tr G."""
    C, rtol = attribution["num_classes"], attribution["rtol"]
    parts = []
    for part, name in (("class_g1", "G1"), ("class_g0_g1_g2", "G0+G1+G2")):
        errors = attribution["relative_errors"][part]
        worst = f"{max(errors):.2g}" if len(errors) else "n/a"
        parts.append(f"{attribution['explained'][part]}/{C} by {name} (max rel. err {worst})")
    shares = attribution["trace_shares"]
    return (
        f"outliers explained within {rtol:g}: {', '.join(parts)}; shares of tr G: "
        + ", ".join(
            f"{name} {shares[part]:.3f}"
            for part, name in (
                ("class_g0", "G0"),
                ("class_g1", "G1"),
                ("class_g2", "G2"),
                ("class_within", "within"),
            )
        )
        + f" ({attribution['route']} route, outliers: {attribution['outlier_source']}, "
        f"{attribution['seconds']:.2f} s)"
    )


PART_NAMES = {
    "class_g0": "G0",
    "class_g1": "G1",
    "class_g2": "G2",
    "class_g1_g2": "G1+G2",
    "class_g0_g1_g2": "G0+G1+G2",
}


TRACE_NAMES = {**PART_NAMES, "class_within": "G_within", "gradient_covariance": "G"}


def attribution_lines(attribution: dict) -> list[str]:
    """:func:`attribution_line`, then the matched outliers, the top C eigenvalues of each
    part of G, the relative errors of the matches and the traces (± standard error)."""
    C = attribution["num_classes"]

    def values(array) -> str:
        return ", ".join(f"{v:.5g}" for v in list(array)[:C])

    lines = [
        "attribution: " + attribution_line(attribution),
        f"attribution outliers (top C, {attribution['outlier_source']}): "
        + values(attribution["outliers"]),
    ]
    lines += [
        f"attribution {name} eigenvalues (top C): {values(attribution['values'][part])}"
        for part, name in PART_NAMES.items()
    ]
    lines += [
        f"attribution relative errors of {PART_NAMES[part]}: {values(errors)}"
        for part, errors in attribution["relative_errors"].items()
    ]
    lines.append(
        "attribution traces: "
        + ", ".join(
            f"{TRACE_NAMES[part]} {value:.5g} ± {attribution['trace_stderr'][part]:.2g}"
            for part, value in attribution["traces"].items()
        )
    )
    return lines


TRAINING_KEYS = ("lr", "epochs", "seed", "subset", "batch_size", "momentum", "weight_decay")


def provenance(model_hash: str, metadata: dict) -> dict:
    """What a spectrum group records of its model: the file's sha256 and the training
    settings stored in its metadata (lr, epochs, seed, subset fingerprint, the recipe's
    batch size, momentum and weight decay; a key the file lacks is None)."""
    return {
        "model_sha256": model_hash,
        "training": {key: metadata.get(key) for key in TRAINING_KEYS},
    }


def _per_class_value(label) -> int | str:
    """A per-class count as a number, or the label 'full'."""
    return int(label) if str(label).isdigit() else str(label)
