"""Bring your own model and dataset (issue 12, item 5): factories named by import path,
their errors, and the example config (config/transformer.yaml) end to end."""

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_workflow import snakemake

from hspec.errors import HspecError
from hspec.pipeline import cli, examples, factories, run_files
from hspec.pipeline.store import read_blocks, read_spectrum

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_module(monkeypatch):
    """An importable module ``own_factories`` with factories good and bad."""
    module = types.ModuleType("own_factories")
    module.data = lambda split: (torch.randn(6, 3), torch.arange(6) % 2)
    module.not_a_pair = lambda split: torch.zeros(3)
    module.short = lambda split: (torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64))
    module.boom = lambda *args: 1 / 0
    module.net = lambda: torch.nn.Linear(3, 2)
    module.not_a_module = lambda: "a net"
    module.value = 3
    monkeypatch.setitem(sys.modules, "own_factories", module)
    return module


@pytest.mark.parametrize(
    "path, culprit",
    [
        ("own_factories.data", "not an import path of the form package.module:function"),
        ("no_such_package_xyz:make", "cannot import 'no_such_package_xyz'"),
        ("own_factories:missing", "'own_factories' has no callable 'missing'"),
        ("own_factories:value", "'own_factories' has no callable 'value'"),
    ],
)
def test_a_path_that_does_not_resolve_is_named(own_module, path, culprit):
    with pytest.raises(HspecError, match=f"^factory {path!r}: {culprit}"):
        factories.resolve(path)


@pytest.mark.parametrize(
    "call, culprit",
    [
        (lambda: factories.load_split("own_factories:not_a_pair", "train"), "must be a tuple"),
        (lambda: factories.load_split("own_factories:short", "test"), "as many inputs as targets"),
        (lambda: factories.load_split("own_factories:boom", "train"), "failed: ZeroDivision"),
        (lambda: factories.create_model("own_factories:not_a_module"), "must return a torch.nn"),
        (lambda: factories.create_model("own_factories:boom"), "failed: ZeroDivision"),
    ],
)
def test_a_factory_that_returns_the_wrong_thing_is_named(own_module, call, culprit):
    with pytest.raises(HspecError, match=culprit) as error:
        call()
    assert "own_factories:" in str(error.value)


def test_good_factories_resolve(own_module):
    inputs, targets = factories.load_split("own_factories:data", "train")
    assert inputs.shape == (6, 3) and factories.num_classes(targets, "cross_entropy") == 2
    assert isinstance(factories.create_model("own_factories:net"), torch.nn.Linear)


def test_the_cli_names_a_bad_factory_in_one_line(tmp_path, capsys):
    argv = ["train", "--dataset", "tokens", "--arch", "own", "--lr", "0.1", "--epochs", "1"]
    argv += ["--dataset-factory", "hspec.pipeline.examples:token_data", "--device", "cpu"]
    status = cli.main(
        argv + ["--model-factory", "hspec.pipeline.examples:nothing", "--out", str(tmp_path)]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert err == (
        "hspec: error: factory 'hspec.pipeline.examples:nothing': "
        "'hspec.pipeline.examples' has no callable 'nothing'\n"
    )


def test_the_example_trains_and_its_spectra_use_the_sequence_loss(tmp_path):
    """One epoch of the example transformer through `hspec train`, then one block's
    spectrum: the model.pt rebuilds from its factory (recorded with it), and the spectrum
    is of the token cross-entropy (its block's n_params: the head's 16 x 16)."""
    run = tmp_path / "run"
    own = ["--dataset", "tokens", "--dataset-factory", "hspec.pipeline.examples:token_data"]
    argv = ["train", *own, "--arch", "transformer", "--lr", "0.1", "--epochs", "1"]
    argv += ["--model-factory", "hspec.pipeline.examples:tiny_transformer", "--device", "cpu"]
    assert cli.main(argv + ["--quiet", "--out", str(run)]) == 0
    model, metadata = run_files.load_model(run / "model.pt")
    assert metadata["model_factory"] == "hspec.pipeline.examples:tiny_transformer"
    assert metadata["num_classes"] == examples.VOCAB_SIZE
    assert "loss" not in metadata  # cross-entropy, the default, as for the paper's nets
    assert model(examples.token_data("test")[0]).shape == (128, 8, 16)
    out = tmp_path / "head.zarr"
    argv = ["spectrum", "--model", str(run / "model.pt"), *own, "--split", "test"]
    argv += ["--params", "head.weight", "--steps", "8", "--bound-steps", "8", "--points", "32"]
    assert cli.main(argv + ["--device", "cpu", "--quiet", "--out", str(out)]) == 0
    _, attrs = read_spectrum(out)
    assert (attrs["n_params"], attrs["loss"], attrs["param_names"]) == (
        256,
        "cross_entropy",
        ["head.weight"],
    )
    assert attrs["n_samples"] == 128


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """config/transformer.yaml run by Snakemake in a copy of the project's inputs."""
    work = tmp_path_factory.mktemp("own")
    shutil.copy(ROOT / "config.yaml", work)
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    shutil.copytree(ROOT / "config", work / "config")
    snakemake("--cores", "2", "--configfile", "config/transformer.yaml", cwd=work)
    config = yaml.safe_load((ROOT / "config" / "transformer.yaml").read_text())
    return work / config["results"]


@pytest.mark.slow  # the whole DAG: 2 trainings, 2 spectrum jobs, 2 figures (~3-5 minutes)
def test_the_example_config_runs_the_whole_dag(example):
    figures = example / "figures"
    for fig in ("fig1", "fig7"):
        for ext in ("png", "pdf", "html", "ipynb"):
            assert (figures / fig / f"{fig}.{ext}").stat().st_size > 0
    choice = json.loads((example / "models/transformer/tokens/nfull/selection.json").read_text())
    assert choice["test_accuracy"] > 0.5  # the counting rule is learnt (chance: 1/16)
    spectra = example / "spectra/transformer/tokens/nfull"
    blocks, attrs = read_blocks(spectra / "train-hessian-blocks.zarr")
    model = examples.tiny_transformer()
    names = [name for name, _ in model.named_parameters()]
    assert [n for _, (_, a) in blocks.items() for n in a["param_names"]] == names
    assert attrs["loss"] == "cross_entropy" and attrs["dataset"] == "tokens"
    numbers = json.loads((figures / "fig7" / "numbers.json").read_text())["panels"]["tokens"]
    assert list(blocks) == attrs["blocks"]  # in named_parameters() order
    assert sorted(numbers["blocks"]) == sorted(blocks)  # numbers.json sorts its keys
    assert numbers["params_partition"] is True
    assert sum(b["n_params"] for b in numbers["blocks"].values()) == numbers["whole"]["n_params"]
    # Cauchy interlacing of every diagonal block, on the extreme Ritz values
    assert numbers["all_interlaced"] is True
    # Σ_B tr H_BB = tr H: stochastic trace estimates of one start vector each
    assert numbers["trace_relative_difference"] < 0.5
    assert np.isfinite(numbers["whole"]["trace"]) and numbers["whole"]["trace"] > 0
