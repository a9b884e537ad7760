"""The workflow configuration: one definition of every setting and its default, partial
configs, quoting of config strings in shell commands, and the `spectra` target."""

import inspect
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from test_workflow import snakemake

from hspec import settings, spectral_density
from hspec.curvature import operators
from hspec.pipeline import training
from hspec.pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FIG1 = {"fig1": {"arch": "mlp", "datasets": ["digits"], "per_class": ["full"]}}


def job_counts(output):
    """The dry run's "Job stats" table as {rule: count}."""
    lines = output.split("Job stats:")[1].splitlines()[3:]
    rows = [line.split() for line in lines[: lines.index("")]]
    return {name: int(count) for name, count in rows}


def write_config(folder, **config):
    path = folder / "config-under-test.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# --- one definition of the settings ---------------------------------------------------


def schema_keys(node, path=()):
    """(path, property schema) of every key the schema defines, into $refs."""
    node = settings.resolve(node)
    for key, sub in node.get("properties", {}).items():
        yield path + (key,), settings.resolve(sub)
        yield from schema_keys(sub, path + (key,))


def test_every_key_has_a_description_and_a_default():
    """Every key is documented and has a default: its own, or its part of its parent's
    (the figures and datasets are defaulted as a whole, so a config replaces them)."""
    defaults = settings.defaults()
    keys = list(schema_keys(settings.schema()))
    assert len(keys) > 50
    for path, sub in keys:
        assert sub.get("description"), path
        value = defaults
        for part in path:
            assert part in value, f"{'.'.join(path)} has no default"
            value = value[part]


def test_snakemake_fills_the_same_nested_defaults():
    """snakemake.utils.validate(set_default=True), the Snakefile's, fills nested objects
    (a missing section, a missing key of a given section) as hspec.settings does; and a
    given `datasets` or `figures` is kept as given, not extended."""
    empty = {}
    validate(empty, str(settings.SCHEMA_FILE), set_default=True)
    assert empty == settings.defaults()
    partial = {
        "datasets": {"mnist": {"epochs": 3}},
        "spectrum": {"steps": 9},
        "figures": {"fig3": {"arch": "mlp", "datasets": ["mnist"], "per_class": [5]}},
    }
    expected = settings.complete(partial)
    validate(partial, str(settings.SCHEMA_FILE), set_default=True)
    assert partial == expected
    assert partial["datasets"] == {"mnist": {"epochs": 3, "lrs": [0.1, 0.075, 0.05, 0.025, 0.01]}}
    assert partial["spectrum"] == {**settings.SPECTRUM, "steps": 9}
    assert list(partial["figures"]) == ["fig3"]


def test_the_defaults_are_the_papers():
    """Section 3.1, Table 1, Section 3.2 (shared/notes/reference-settings.md)."""
    assert (
        training.LR_GRID["mnist"]
        == training.LR_GRID["fashionmnist"]
        == (0.1, 0.075, 0.05, 0.025, 0.01)
    )
    assert (
        training.LR_GRID["cifar10"]
        == training.LR_GRID["cifar100"]
        == (0.25, 0.1, 0.075, 0.05, 0.025, 0.0075)
    )
    assert {name: training.EPOCHS[name] for name in ("mnist", "cifar100")} == {
        "mnist": 200,
        "cifar100": 350,
    }
    assert {key: settings.TRAINING[key] for key in ("batch_size", "momentum", "weight_decay")} == {
        "batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }
    spectrum = settings.SPECTRUM
    assert (
        spectrum["bound_steps"],
        spectrum["margin"],
        spectrum["steps"],
        spectrum["points"],
        spectrum["n_vec"],
        spectrum["log_steps"],
    ) == (64, 0.05, 256, 1024, 1, 2048)
    # the paper's five, Fig. 6 (on Fig. 5's spectra) and fig7 (per-block spectra of Fig. 4's model)
    assert list(settings.defaults()["figures"]) == [
        "fig1",
        "fig2",
        "fig3",
        "fig4",
        "fig5",
        "fig6",
        "fig7",
    ]
    assert settings.defaults()["figures"]["fig7"] == settings.defaults()["figures"]["fig4"]


SPECTRUM_ARGS = [
    "spectrum",
    "--model",
    "m.pt",
    "--dataset",
    "digits",
    "--split",
    "train",
    "--out",
    "o.zarr",
]


def test_the_library_and_cli_defaults_are_the_settings():
    """spectral_density's signature, curvature_operator's batch size, the training
    recipe and `hspec spectrum`/`hspec train` defaults all equal hspec.settings."""
    signature = inspect.signature(spectral_density).parameters
    shared = [key for key in settings.SPECTRUM if key in signature]
    assert len(shared) == 12 and "seed" in shared  # spectrum.seed: the start vectors'
    for key in shared:
        assert signature[key].default == settings.SPECTRUM[key], key
    assert operators.DEFAULT_BATCH_SIZE == settings.SPECTRUM["batch_size"]
    assert (training.BATCH_SIZE, training.MOMENTUM, training.WEIGHT_DECAY) == tuple(
        settings.TRAINING[k] for k in ("batch_size", "momentum", "weight_decay")
    )
    args = build_parser().parse_args(SPECTRUM_ARGS)
    expected = {**settings.SPECTRUM, "device": "auto"}
    for key in settings.SPECTRUM_OPTIONS:
        assert getattr(args, key) == expected[key], key
    train = build_parser().parse_args(
        ["train", "--dataset", "digits", "--arch", "mlp", "--lr", "0.1", "--out", "run"]
    )
    assert (train.batch_size, train.momentum, train.weight_decay, train.seed) == (128, 0.9, 5e-4, 0)


# --- hspec spectrum --settings FILE ----------------------------------------------------


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(
        json.dumps(
            {"steps": 7, "resident": False, "seed": 3, "device": "cpu", "deflation": "krylov"}
        )
    )
    return str(path)


@pytest.mark.parametrize("order", ["flags first", "file first"])
def test_explicit_flags_override_the_settings_file(settings_file, order):
    flags = ["--steps", "9", "--resident"]
    argv = (
        [*flags, "--settings", settings_file]
        if order == "flags first"
        else ["--settings", settings_file, *flags]
    )
    args = build_parser().parse_args(SPECTRUM_ARGS + argv)
    assert (args.steps, args.resident) == (9, True)
    assert (args.seed, args.device, args.deflation) == (3, "cpu", "krylov")
    assert args.points == settings.SPECTRUM["points"]


@pytest.mark.parametrize(
    "content, culprit",
    [
        ({"steps": 7.0}, "steps must be an integer, not 7.0"),
        ({"threads": 4}, "'threads' was unexpected"),
        ({"k": 1.0}, "k: 1.0 is less than or equal to the minimum of 1"),
        ({"seed": 2**32}, "seed: 4294967296 is greater than the maximum"),
    ],
)
def test_a_bad_settings_file_is_one_error_naming_the_key(tmp_path, capsys, content, culprit):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(SPECTRUM_ARGS + ["--settings", str(path)])
    assert exit_.value.code == 2
    assert culprit in capsys.readouterr().err


def test_no_resident_turns_the_default_off():
    assert settings.SPECTRUM["resident"] is True
    assert build_parser().parse_args(SPECTRUM_ARGS + ["--no-resident"]).resident is False


# --- partial configs (item 5) ----------------------------------------------------------


@pytest.fixture(params=["repository root", "another folder"])
def cwd(request, tmp_path):
    if request.param == "repository root":
        return ROOT
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    return tmp_path


def test_a_config_with_only_fig1_plans_only_fig1(cwd, tmp_path):
    """A --configfile replaces config.yaml and its `figures` replaces the paper's: Fig. 1
    on digits is 5 training runs (digits' default grid), 1 spectrum, 1 figure."""
    config = write_config(
        tmp_path, results=str(tmp_path / "out"), download=False, device="cpu", figures=FIG1
    )
    result = snakemake("-n", "--quiet", "rules", "--configfile", config, cwd=cwd)
    assert job_counts(result.stdout) == {
        "download": 1,
        "train": 5,
        "select": 1,
        "spectrum": 1,
        "figure": 1,
        "all": 1,
        "total": 10,
    }


def test_every_figures_entry_plans_its_panel(tmp_path):
    """Fig. 3 on two datasets and Fig. 4 at three sizes: a panel each, so the dry run
    plans Fig. 3's two train-Hessian spectra (plain, deflated) per dataset and Fig. 4's six
    test spectra (H, G deflated, R plain, and the three log variants) per size."""
    lrs = {"lrs": [0.05], "epochs": 2}
    figures = {
        "fig3": {"arch": "mlp", "datasets": ["digits", "mnist"], "per_class": [20]},
        "fig4": {"arch": "mlp", "datasets": ["digits"], "per_class": [10, 20, 60]},
    }
    config = write_config(
        tmp_path,
        results=str(tmp_path / "out"),
        download=False,
        device="cpu",
        datasets={"digits": lrs, "mnist": lrs},
        figures=figures,
    )
    result = snakemake("-n", "-p", "--configfile", config, cwd=ROOT)
    counts = job_counts(result.stdout)
    assert counts["spectrum"] == 2 * 2 + 3 * 6 and counts["figure"] == 2
    for dataset in ("digits", "mnist"):
        assert f"spectra/mlp/{dataset}/n20/train-hessian-deflated.zarr" in result.stdout
    for n in (10, 20, 60):
        assert f"spectra/mlp/digits/n{n}/test-prediction_hessian-log.zarr" in result.stdout


def test_a_config_without_device_gets_the_documented_default(tmp_path):
    config = write_config(tmp_path, results=str(tmp_path / "out"), figures=FIG1)
    result = snakemake("-n", "-p", "--configfile", config, cwd=ROOT)
    default = settings.defaults()["device"]
    assert default == "cuda" and "cuda" in settings.schema()["properties"]["device"]["description"]
    assert f"--device {default} " in result.stdout
    plain = json.loads((tmp_path / "out/settings/spectrum-plain.json").read_text())
    assert plain["device"] == default


def test_settings_files_change_only_with_their_content(tmp_path):
    """The spectrum settings files are inputs of the spectra: rewritten (newer) when their
    content changes, untouched otherwise, so only the affected spectra rerun."""
    out = tmp_path / "out"
    config = dict(results=str(out), device="cpu", download=False, figures=FIG1)
    snakemake("-n", "--configfile", write_config(tmp_path, **config))
    files = {
        variant: out / f"settings/spectrum-{variant}.json"
        for variant in ("plain", "deflated", "log")
    }
    before = {variant: path.stat().st_mtime_ns for variant, path in files.items()}
    assert json.loads(files["log"].read_text())["steps"] == settings.SPECTRUM["log_steps"]
    snakemake("-n", "--configfile", write_config(tmp_path, **config))
    assert {variant: path.stat().st_mtime_ns for variant, path in files.items()} == before
    snakemake("-n", "--configfile", write_config(tmp_path, **config, spectrum={"steps": 99}))
    assert json.loads(files["plain"].read_text())["steps"] == 99
    assert files["plain"].stat().st_mtime_ns > before["plain"]
    assert files["log"].stat().st_mtime_ns == before["log"]


def test_the_start_vector_seed_is_spectrum_seed_not_the_training_seed(tmp_path):
    """spectrum.seed reaches the spectra's settings files; the top-level seed reaches
    training and subsampling only, so changing spectrum.seed retrains nothing."""
    out = tmp_path / "out"
    config = dict(results=str(out), device="cpu", download=False, figures=FIG1, seed=3)
    result = snakemake(
        "-n", "-p", "--configfile", write_config(tmp_path, **config, spectrum={"seed": 5})
    )
    for variant in ("plain", "deflated", "log"):
        assert json.loads((out / f"settings/spectrum-{variant}.json").read_text())["seed"] == 5
    assert "--seed 3 " in result.stdout and "--seed 5" not in result.stdout


# --- quoting (item 3) ------------------------------------------------------------------


def test_config_strings_reach_the_shell_quoted(tmp_path):
    results = f"{tmp_path}/out dir;touch {tmp_path}/pwned;"
    data_dir = f"{tmp_path}/my data's"
    config = write_config(
        tmp_path, results=results, data_dir=data_dir, device="cpu", download=False, figures=FIG1
    )
    result = snakemake("-n", "-p", "spectra", "--configfile", config, cwd=ROOT)
    assert shlex.quote(f"{results}/data/digits.json") in result.stdout
    assert f"--data-dir {shlex.quote(data_dir)} " in result.stdout
    assert shlex.quote(f"{results}/settings/spectrum-plain.json") in result.stdout
    assert not (tmp_path / "pwned").exists()


def test_download_and_subsample_run_in_a_folder_with_a_space_and_a_semicolon(tmp_path):
    """A real run of the first two rules; before quoting, `touch pwned` ran and the
    unquoted space split --data-dir in two."""
    results = "out dir;touch pwned;x"
    config = write_config(
        tmp_path, results=results, data_dir="my data", device="cpu", download=False, figures=FIG1
    )
    target = f"{results}/subsets/digits/n10.npy"
    snakemake("--cores", "1", target, "--configfile", config, cwd=tmp_path)
    assert (tmp_path / target).stat().st_size > 0
    assert (tmp_path / results / "data" / "digits.json").is_file()
    assert not (tmp_path / "pwned").exists()


# --- the spectra target (issue 14) -----------------------------------------------------


def test_the_spectra_target_plans_the_eq11_grid_for_every_selected_model(tmp_path):
    """Demo: 3 models (10, 20, 60 per class) x {train, test} x (H, G plain and
    deflated, R plain) = 30 spectra, and no figure."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["results"] = str(tmp_path / "out")
    result = snakemake(
        "spectra", "-n", "--quiet", "rules", "--configfile", write_config(tmp_path, **config)
    )
    counts = job_counts(result.stdout)
    assert (counts["spectrum"], counts["select"], counts["spectra"]) == (30, 3, 1)
    assert "figure" not in counts
