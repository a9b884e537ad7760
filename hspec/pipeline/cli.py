"""The `hspec` command line: one subcommand per step of the paper's workflow.

Each command has an `_add_<command>(subparsers)` function that declares its options and a
`_<command>(args)` handler. Bad input (unknown names, missing or corrupted files, too many
examples per class) prints one line to stderr and exits with status 2.
"""

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hspec import settings
from hspec.atomic import atomic_write, write_json
from hspec.curvature.check import MAX_PARAMS
from hspec.curvature.operators import COMPONENTS, HVP_MODES, PRECISIONS
from hspec.errors import HspecError
from hspec.numerics.lanczos import REORTH
from hspec.numerics.spectrum import DEFLATIONS, METHODS
from hspec.pipeline import (
    check_job,
    data,
    devices,
    factories,
    locking,
    models,
    run_files,
    selection,
    spectrum_job,
    store,
    training,
)

DEFAULT_DATA_DIR = "data"


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help=f"dataset name (required), one of: {', '.join(data.DATASETS)}",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=Path(DEFAULT_DATA_DIR),
        help="directory holding the torchvision datasets in torchvision's layout; unused for digits "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download missing dataset files (default: off: missing files are an error)",
    )
    parser.add_argument(
        "--dataset-factory",
        default=None,
        metavar="MODULE:FUNCTION",
        help="your own dataset: a function (split) -> (inputs, targets) tensors, named by "
        "import path; --dataset is then its name (default: none, a built-in dataset)",
    )


# help and description of each command
COMMANDS = {
    "download": dict(
        help="check a dataset is in place (downloading it with --download) and summarize it",
        description="Load both splits of a dataset, downloading missing files first if --download is given, "
        "and write a JSON summary: input shape, and examples and class counts per split.",
    ),
    "subsample": dict(
        help="draw a per-class subsample of a train split into an index file",
        description="Draw PER_CLASS train examples of every class without replacement (paper, Section 3.1) "
        "and write their sorted indices as a .npy file.",
    ),
    "train": dict(
        help="train one network with the paper's recipe (resumes an interrupted run)",
        description="Train with SGD (paper, Section 3.1 and Table 1), writing OUT/checkpoint.pt and "
        "OUT/history.zarr after every epoch and OUT/model.pt at the end, then removing OUT/checkpoint.pt. "
        "Rerunning with the same options resumes an interrupted run from OUT/checkpoint.pt (a checkpoint "
        "of other options is discarded) and leaves a finished one as it is. A non-finite loss stops the run.",
    ),
    "select": dict(
        help="pick the best initial learning rate among finished runs",
        description="Pick, among finished runs that differ only in their initial learning rate, the one with "
        "the highest final test accuracy (paper, Section 3.1); ties go to the lower learning rate, then to "
        "the run listed first.",
    ),
    "spectrum": dict(
        help="estimate the spectral density of one curvature operator of a trained model",
        description="NORMALIZATION -> optional LOWRANKDEFLATION -> LANCZOSAPPROXSPEC (or KPM) of the "
        "Hessian, the covariance of gradients or the averaged Hessian of predictions of a trained model on "
        "one split (paper, Section 3.2), written as a Zarr v3 group. Resumable: the state is saved next to "
        "OUT and a rerun with the same options continues. Under torchrun, every rank takes a shard of the "
        "split and rank 0 writes OUT.",
    ),
    "check": dict(
        help="check hspec against the exact spectrum of a small model (dense matrices)",
        description="Build the dense matrix of one curvature operator of a small trained model (at "
        "most --max-params parameters), take its eigenvalues, run the spectrum estimate with the given "
        "settings in float64 and report how far the outliers (relative error, certified intervals) and "
        "the density (Wasserstein-1, L1 against the exact eigenvalues smoothed alike) are from the exact "
        "ones, with a verdict against stated tolerances. Exits with status 1 when the check fails.",
    ),
    "describe": dict(
        help="print what a stored spectrum measured and where it came from",
        description="Read a spectrum group of `hspec spectrum` (checking it as every reader does) and "
        "print its main attributes, its outliers with their certified intervals, its class-structure "
        "attribution (the outliers against the eigenvalues of G1 and G0+G1+G2), and its provenance: "
        "code version and commit, software versions, device, host, times, model file hash and training.",
    ),
}


def _command(subparsers, name: str, handler, *, data_options: bool = True):
    """A subcommand ``name`` run by ``handler(args)``, with the dataset options unless
    ``data_options`` is false; its help texts are ``COMMANDS[name]``."""
    parser = subparsers.add_parser(name, **COMMANDS[name])
    if data_options:
        _add_data_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def _add_out(parser, text: str, *, metavar: str = "FILE", required: bool = True) -> None:
    """The ``--out`` option: where the command writes (the path it locks, see :func:`main`)."""
    parser.add_argument(
        "--out",
        type=Path,
        required=required,
        default=None,
        metavar=metavar,
        help=f"{text} ({'required' if required else 'default: none'})",
    )


def _add_download(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "download", _download)
    _add_out(parser, "JSON summary to write")


def _download(args: argparse.Namespace) -> None:
    summary: dict[str, object] = {"dataset": args.dataset, "data_dir": str(args.data_dir)}
    if args.dataset_factory:
        summary["factory"] = args.dataset_factory
        for split in data.SPLITS:
            inputs, targets = factories.load_split(args.dataset_factory, split)
            summary["input_shape"] = list(inputs.shape[1:])
            summary[split] = {"examples": len(targets), "target_shape": list(targets.shape[1:])}
        write_json(args.out, summary)
        print(f"{args.dataset} (factory {args.dataset_factory}) is in place; wrote {args.out}")
        return
    for split in data.SPLITS:
        inputs, targets = data.load_split(args.dataset, split, args.data_dir, args.download)
        summary["input_shape"] = list(inputs.shape[1:])
        counts = torch.bincount(targets, minlength=data.num_classes(args.dataset))
        summary[split] = {"examples": len(targets), "class_counts": counts.tolist()}
    write_json(args.out, summary)
    print(f"{args.dataset} is in place; wrote {args.out}")


def _add_subsample(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "subsample", _subsample)
    parser.add_argument(
        "--per-class", type=int, required=True, metavar="N", help="examples per class (required)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the draw (default: %(default)s)"
    )
    _add_out(parser, "index file to write, .npy")


def _subsample(args: argparse.Namespace) -> None:
    _, targets = data.load_dataset(
        args.dataset, "train", args.data_dir, args.download, args.dataset_factory
    )
    if targets.ndim != 1:
        raise HspecError(f"{args.dataset}: per-class subsampling needs one class per example")
    indices = data.subsample(targets, args.per_class, args.seed)
    data.save_indices(args.out, indices)
    print(
        f"wrote {len(indices)} indices ({args.per_class} per class) of {args.dataset} train to {args.out}"
    )


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "train", _train)
    parser.add_argument(
        "--arch",
        required=True,
        metavar="NAME",
        help=f"network (required), one of: {', '.join(models.ARCHS)}",
    )
    parser.add_argument(
        "--model-factory",
        default=None,
        metavar="MODULE:FUNCTION",
        help="your own network: a function () -> torch.nn.Module, named by import path; "
        "--arch is then its name (default: none, a built-in network)",
    )
    parser.add_argument(
        "--loss",
        choices=training.LOSSES,
        default="cross_entropy",
        help="training loss: cross_entropy over classes (N, C) or tokens (N, T, V), ignore "
        "index -100; mse: squares summed per example (default: %(default)s)",
    )
    parser.add_argument(
        "--indices",
        type=Path,
        default=None,
        metavar="FILE",
        help="index file of `hspec subsample` choosing the train examples "
        "(default: the whole train split)",
    )
    grids = "; ".join(
        f"{name}: {', '.join(map(str, grid))}" for name, grid in training.LR_GRID.items()
    )
    parser.add_argument(
        "--lr",
        type=float,
        required=True,
        help=f"initial learning rate (required); the grids (Table 1; digits: ours) are {grids}",
    )
    epochs = ", ".join(f"{name} {count}" for name, count in training.EPOCHS.items())
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: per dataset, Table 1; digits: ours: {epochs})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=settings.defaults()["seed"],
        help="seed of the initial weights and of the data order (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=training.BATCH_SIZE,
        help="batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--momentum",
        type=float,
        default=training.MOMENTUM,
        help="SGD momentum (default: %(default)s)",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=training.WEIGHT_DECAY,
        help="weight decay (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device, e.g. cpu or cuda:0; auto: cuda if available, else cpu "
        "(default: %(default)s)",
    )
    _add_out(parser, "run directory to write, or to resume", metavar="DIR")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (default: a bar on a terminal)"
    )


def _train(args: argparse.Namespace) -> None:
    if not args.model_factory:
        models.validate(args.arch)
    device = devices.resolve(args.device)
    train_x, train_y = data.load_dataset(
        args.dataset, "train", args.data_dir, args.download, args.dataset_factory
    )
    if args.dataset_factory:
        channels = train_x.shape[1] if train_x.ndim > 2 else 1
        classes = factories.num_classes(train_y, args.loss)
    else:
        channels, classes = data.in_channels(args.dataset), data.num_classes(args.dataset)
    if args.epochs is None and args.dataset not in training.EPOCHS:
        raise HspecError(f"--epochs: required for dataset {args.dataset!r} (no default)")
    indices = None
    if args.indices is not None:
        indices = data.load_indices(args.indices, size=len(train_y))
        train_x, train_y = train_x[torch.from_numpy(indices)], train_y[torch.from_numpy(indices)]
    config = training.TrainConfig(
        arch=args.arch,
        dataset=args.dataset,
        in_channels=channels,
        num_classes=classes,
        lr=args.lr,
        epochs=training.EPOCHS[args.dataset] if args.epochs is None else args.epochs,
        seed=args.seed,
        subset=data.fingerprint(indices),
        batch_size=args.batch_size,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        loss=args.loss,
        model_factory=args.model_factory or "",
        dataset_factory=args.dataset_factory or "",
    )
    test_set = data.load_dataset(
        args.dataset, "test", args.data_dir, args.download, args.dataset_factory
    )
    history = training.train(
        config, (train_x, train_y), test_set, args.out, device, False if args.quiet else None
    )
    final = history[-1]
    print(
        f"wrote {args.out / run_files.MODEL_FILE}: test accuracy {final['test_accuracy']:.4f}, "
        f"test loss {final['test_loss']:.4g} after {final['epoch']} epochs"
    )


def _add_select(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "select", _select, data_options=False)
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories of `hspec train`"
    )
    _add_out(parser, "JSON file to write the choice to", required=False)
    parser.add_argument(
        "--model-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to copy the best run's model.pt (default: none)",
    )


def _select(args: argparse.Namespace) -> None:
    choice = selection.select(args.runs)
    if args.out is not None:
        write_json(args.out, choice)
    if args.model_out is not None:
        model = Path(choice["best"]) / run_files.MODEL_FILE
        if not model.is_file():
            raise HspecError(f"the best run has no {str(model)!r}")
        atomic_write(args.model_out, lambda file: file.write(model.read_bytes()))
    print(
        f"best: {choice['best']} (lr {choice['lr']}, test accuracy {choice['test_accuracy']:.4f})"
    )


# the numeric options of `hspec spectrum`: flag, type, help (defaults: hspec.settings)
SPECTRUM_NUMBERS = (
    ("--steps", int, "Lanczos steps M"),
    ("--bound-steps", int, "NORMALIZATION steps M0"),
    ("--margin", float, "NORMALIZATION margin kappa"),
    ("--points", int, "grid points K"),
    ("--n-vec", int, "Lanczos start vectors"),
    ("--iterations", int, "subspace iterations T"),
    ("--k", float, "smoothing constant of Alg. 3"),
    ("--batch-size", int, "examples per forward pass"),
    (
        "--checkpoint-interval",
        float,
        "seconds between saves of the resumable state, OUT.rankR.ckpt",
    ),
)


def _deflate(value: str) -> int | str:
    """--deflate: a count, or 'classes' (the model's number of classes)."""
    if value == "classes":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or 'classes': {value!r}") from None


def _add_spectrum(subparsers: argparse._SubParsersAction) -> None:
    S = settings.SPECTRUM
    parser = _command(subparsers, "spectrum", spectrum_job.run)
    spec = _add_estimate_options(parser, SPECTRUM_NUMBERS)
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=S["precision"],
        **spec,
        help="products and vectors in float32, float32 with TF32 tensor cores on CUDA "
        "(faster, ~1e-4 relative error per product), or float64 (default: %(default)s)",
    )
    parser.add_argument(
        "--hvp",
        choices=("auto",) + HVP_MODES,
        default=S["hvp"],
        **spec,
        help="how H v and R v are differentiated; all exact, they differ in speed; auto: "
        "the fastest measured on the device's kind (default: %(default)s)",
    )
    parser.add_argument(
        "--compile",
        "--no-compile",
        default=S["compile"],
        **settings.switch(
            help="torch.compile the per-batch product: a one-time compile for faster products "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--resident",
        "--no-resident",
        default=S["resident"],
        **settings.switch(
            help="keep the whole split on the device instead of moving each batch at each product "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--n-per-class",
        default=None,
        help="examples per class the model was trained on, recorded in OUT "
        "(default: counted from --indices, else 'full')",
    )
    _add_out(parser, "Zarr group to write", metavar="OUT")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (default: bars on a terminal)"
    )


def _add_estimate_options(parser, numbers) -> dict:
    """The options `hspec spectrum` and `hspec check` share: the model, split and
    component, and the settings of spectral_density (with ``numbers``, of
    SPECTRUM_NUMBERS); returns the keyword arguments that mark an option given explicitly."""
    S = settings.SPECTRUM
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model.pt of `hspec train`/`hspec select` (required)",
    )
    parser.add_argument(
        "--split", choices=data.SPLITS, required=True, help="train or test split (required)"
    )
    parser.add_argument(
        "--indices",
        type=Path,
        default=None,
        help="index file of `hspec subsample` restricting the train split (default: whole split)",
    )
    parser.add_argument(
        "--component", choices=COMPONENTS, default="hessian", help="operator (default: %(default)s)"
    )
    blocks = parser.add_mutually_exclusive_group()
    blocks.add_argument(
        "--params",
        default=None,
        metavar="REGEX",
        help="the block of the parameters whose names (named_parameters()) match REGEX: the "
        "spectrum of that diagonal block alone, every other parameter fixed "
        "(default: all parameters)",
    )
    blocks.add_argument(
        "--blocks",
        nargs="*",
        default=None,
        metavar="NAME=REGEX",
        help="one spectrum per block, written as one group with a subgroup per block: per "
        "layer without values (hspec.curvature.blocks.layer_blocks), else the named blocks "
        "(default: off)",
    )
    parser.add_argument(
        "--settings",
        action=settings.SettingsFile,
        metavar="FILE",
        help="JSON object of spectrum settings (keys: the options below, with "
        "underscores: " + ", ".join(settings.SPECTRUM_OPTIONS) + "), as the workflow "
        "writes them; options given explicitly override the file",
    )
    spec = dict(action=settings.Explicit)
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=S["method"],
        **spec,
        help="density method (default: %(default)s)",
    )
    parser.add_argument(
        "--deflate",
        type=_deflate,
        default=0,
        help="outliers removed first by LOWRANKDEFLATION, e.g. the number of classes; "
        "'classes': the model's number of classes (default: %(default)s)",
    )
    for flag, kind, text in numbers:
        key = flag.removeprefix("--").replace("-", "_")
        parser.add_argument(
            flag, type=kind, default=kind(S[key]), **spec, help=f"{text} (default: %(default)s)"
        )
    parser.add_argument(
        "--deflation",
        choices=DEFLATIONS,
        default=S["deflation"],
        **spec,
        help="outlier search: subspace = the paper's Alg. 5 (T x C products), krylov = thick-restart "
        "Lanczos (a few dozen products) (default: %(default)s)",
    )
    parser.add_argument(
        "--reorth",
        choices=REORTH,
        default=S["reorth"],
        **spec,
        help="re-orthogonalization of the bulk's Lanczos runs: none = the paper's FASTLANCZOS "
        "(ghosts detected and stored), full = against the whole basis (dim x steps memory) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        **spec,
        help="torch device; auto = cuda if available (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=S["seed"],
        **spec,
        help="seed of the random vectors: Lanczos start vectors, probes, deflation block "
        "(spectrum.seed; not the training seed) (default: %(default)s)",
    )
    return spec


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "check", check_job.run)
    numbers = [n for n in SPECTRUM_NUMBERS if n[0] != "--checkpoint-interval"]
    _add_estimate_options(parser, numbers)
    parser.add_argument(
        "--max-params",
        type=int,
        default=MAX_PARAMS,
        metavar="P",
        help="refuse a model with more parameters: the check builds a P x P matrix "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the whole report as JSON, atomically (default: none)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (default: bars on a terminal)"
    )
    parser.set_defaults(out=None)


def _add_describe(subparsers: argparse._SubParsersAction) -> None:
    parser = _command(subparsers, "describe", _describe, data_options=False)
    parser.add_argument("path", type=Path, metavar="PATH", help="spectrum Zarr group (required)")
    parser.set_defaults(out=None)


DESCRIBED = (
    "component",
    "split",
    "dataset",
    "arch",
    "n_per_class",
    "n_samples",
    "n_params",
    "lambda_min",
    "lambda_max",
    "hvp_count",
    "seconds",
    "model",
    "loss",
    "block",
    "param_names",
)


def _describe(args: argparse.Namespace) -> None:
    if store.is_blocks(args.path):
        spectra, attrs = store.read_blocks(args.path)
        lines = [f"{args.path}: {len(spectra)} blocks: {', '.join(spectra)}"]
        for name, (arrays, block_attrs) in spectra.items():
            lines += [f"[block {name}]"] + _spectrum_lines(args.path / name, arrays, block_attrs)
        print("\n".join(lines))
        return
    print("\n".join(_spectrum_lines(args.path, *store.read_spectrum(args.path))))


def _spectrum_lines(path: Path, arrays: dict, attrs: dict) -> list[str]:
    """What `hspec describe` prints of one spectrum group."""
    lines = [f"{path}: spectrum"]
    lines += [f"  {key}: {attrs[key]}" for key in DESCRIBED if key in attrs]
    lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in attrs["settings"].items()))
    residuals = arrays.get("residuals")
    for index, value in enumerate(arrays["outliers"]):
        if residuals is None:
            lines.append(f"  outlier {index}: {value:.8g} (no residual stored)")
            continue
        flag = "converged" if arrays["converged"][index] else "NOT CONVERGED"
        lines.append(f"  outlier {index}: {value:.8g} ± {residuals[index]:.3g} ({flag})")
    if "convergence_l1" in arrays and len(arrays["convergence_l1"]):
        ghosts = np.bincount(arrays["ghost_runs"], minlength=len(arrays["convergence_l1"]))
        lines.append(
            f"  lanczos runs: ghosts {ghosts.tolist()}, density change M/2 -> M "
            f"(L1) {', '.join(f'{v:.3g}' for v in arrays['convergence_l1'])}"
        )
    attribution = store.attribution_of(arrays, attrs)
    if attribution is not None:
        lines += ["  " + line for line in spectrum_job.attribution_lines(attribution)]
    provenance = attrs.get("provenance")
    if provenance is None:
        lines.append("  provenance: none recorded (written by an older hspec)")
    for key, value in (provenance or {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"  provenance.{key}: {value}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The `hspec` parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="hspec", description="Full eigenvalue spectra of deep-net Hessians (Papyan, 2019)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_download(subparsers)
    _add_subsample(subparsers)
    _add_train(subparsers)
    _add_select(subparsers)
    _add_spectrum(subparsers)
    _add_check(subparsers)
    _add_describe(subparsers)
    return parser


def _output_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """`locking.hold` on the command's output (`--out`, else `--model-out`, else none); under
    torchrun every rank but 0 takes its own lock, `.NAME.rankR.lock`."""
    output = args.out if args.out is not None else getattr(args, "model_out", None)
    if output is None:
        return contextlib.nullcontext()
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    return locking.hold(output, tag=f".rank{rank}" if rank else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hspec` command line on `argv` (default: sys.argv[1:]); return the exit status.

    A handler's integer return is the status (`hspec check`: 1 when its verdict fails).
    The command runs holding `locking.hold` on its output (`--out`, else `--model-out`; under
    torchrun, one lock per rank): while another process writes that output, the command
    fails at once with one line, touching nothing.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hspec: %(message)s", stream=sys.stderr)
    try:
        with _output_lock(args):
            status = args.handler(args)
    except (HspecError, OSError) as error:
        print(f"hspec: error: {error}", file=sys.stderr)
        return 2
    return status or 0
