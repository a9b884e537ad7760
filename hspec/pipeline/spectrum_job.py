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
    model's (its metadata's ``loss``), a dataset factory's split comes from the factory."""
    blocks = parse_blocks(args.blocks)
    check_out(args.out, "spectrum" if blocks is None else "blocks")
    rank, world = distributed.init_from_env(args.device if args.device != "auto" else None)
    device = distributed.local_device(str(devices.resolve(args.device)))
    if args.dataset_factory:
        expect = {"dataset": args.dataset, "dataset_factory": args.dataset_factory}
    else:
        stats = data.spec(args.dataset)
        expect = {
            "dataset": args.dataset,
            "num_classes": stats.num_classes,
            "in_channels": stats.in_channels,
        }
    model, metadata = run_files.load_model(args.model, device=device, expect=expect)
    if args.deflate == "classes":
        args.deflate = int(metadata["num_classes"])
    inputs, targets = data.load_dataset(
        args.dataset, args.split, args.data_dir, args.download, args.dataset_factory
    )
    n_per_class = args.n_per_class or "full"
    indices = None
    if args.indices is not None:
        if args.split != "train":
            raise HspecError("--indices: only the train split is subsampled")
        indices = data.load_indices(args.indices, size=len(targets))
        index = torch.from_numpy(indices)
        inputs, targets = inputs[index], targets[index]
        n_per_class = args.n_per_class or int(torch.bincount(targets).max())
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
    if rank == 0:
        block = {"block": args.params, "param_names": op.param_names} if args.params else {}
        store.write_spectrum(args.out, result, {**attrs, "hvp": op.hvp, **block})
        print(
            f"wrote {args.out}: range [{result.lambda_min:.4g}, {result.lambda_max:.4g}], "
            f"{len(result.outliers)} outliers, {result.hvp_count} products in {result.seconds:.1f} s"
        )
    checkpoint.unlink(missing_ok=True)


def _estimate(args, op, checkpoint: Path, key: dict):
    """:func:`spectral_density` of ``op`` with the job's options, resumable from ``checkpoint``."""
    return spectral_density(
        op,
        method=args.method,
        deflate=args.deflate,
        steps=args.steps,
        bound_steps=args.bound_steps,
        margin=args.margin,
        points=args.points,
        n_vec=args.n_vec,
        iterations=args.iterations,
        deflation=args.deflation,
        k=args.k,
        seed=args.seed,
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
