# Paths and the per-figure choice of spectra. Every output lives under config["results"].
import json
from pathlib import Path

from hspec.figures import captions, specs
from hspec.atomic import atomic_write
from hspec.pipeline.config import check
from hspec.pipeline.data import DATASETS, num_classes
from hspec.settings import SPECTRUM_OPTIONS, schema

RESULTS = config["results"]
SPECTRUM = config["spectrum"]
GPU = 1 if config["device"].startswith("cuda") else 0
FIGURE_FILES = ("ipynb", "html", "png", "pdf")
NOTEBOOKS = {fig: f"notebooks/{name}.ipynb" for fig, name in specs.NOTEBOOKS.items()}


wildcard_constraints:
    arch="[a-z0-9]+",
    dataset="[a-z0-9]+",
    n=r"full|\d+",
    lr=r"[0-9.e-]+",
    split="train|test",
    component="hessian|gradient_covariance|prediction_hessian",
    variant="plain|deflated|log",
    fig="fig[1-7]",


check(config)


def run_dir(arch, dataset, n, lr):
    return f"{RESULTS}/runs/{arch}/{dataset}/n{n}/lr{lr}"


def model_path(arch, dataset, n):
    return f"{RESULTS}/models/{arch}/{dataset}/n{n}/model.pt"


def spectrum_path(arch, dataset, n, split, component, variant):
    return specs.spectrum_path(RESULTS, arch, dataset, n, split, component, variant)


def indices_path(dataset, n):
    return f"{RESULTS}/subsets/{dataset}/n{n}.npy"


def figure_stem(fig):
    return f"{RESULTS}/figures/{fig}/{fig}"


def figure_outputs(fig):
    return [f"{figure_stem(fig)}.{ext}" for ext in FIGURE_FILES] + [
        specs.figure_files(fig, RESULTS)["numbers"]
    ]


def all_figure_targets():
    return [path for fig in config["figures"] for path in figure_outputs(fig)]


def figure_parameters(fig):
    """The notebook's parameters: hspec.figures.specs.figure_parameters, the one map."""
    return specs.figure_parameters(fig, config["figures"][fig], RESULTS, config["blocks"])


def figure_inputs(wildcards):
    """The spectrum groups a figure reads (every path among its parameters)."""
    return specs.spectrum_paths(figure_parameters(wildcards.fig))


def figure_yaml(wildcards):
    """papermill -y: the parameters plus where to write the figure and its numbers."""
    return specs.papermill_yaml(
        wildcards.fig, config["figures"][wildcards.fig], RESULTS, config["blocks"]
    )


def figure_caption(wildcards):
    """The figure's caption (hspec.figures.captions), for the report."""
    return f"**{captions.title(wildcards.fig)}**\n\n{captions.caption(wildcards.fig)}"


# --- your own networks and datasets (factories named by import path) ---------------------
OWN_LOSS = schema()["$defs"]["own_dataset"]["properties"]["loss"]["default"]


def dataset_factory(dataset):
    """--dataset-factory PATH for your own dataset, as a list of arguments (else none)."""
    entry = config["datasets"][dataset]
    return ["--dataset-factory", entry["factory"]] if "factory" in entry else []


def train_options(wildcards):
    """--model-factory and --loss for your own network and dataset, as a list of arguments."""
    options = dataset_factory(wildcards.dataset)
    if wildcards.arch in config["models"]:
        options += ["--model-factory", config["models"][wildcards.arch]]
    if wildcards.dataset not in DATASETS:
        options += ["--loss", config["datasets"][wildcards.dataset].get("loss", OWN_LOSS)]
    return options


def deflation(wildcards):
    """--deflate of a spectrum: C for the deflated variant (your own dataset: the model's
    number of classes, read from it), else 0."""
    if wildcards.variant != "deflated":
        return 0
    return num_classes(wildcards.dataset) if wildcards.dataset in DATASETS else "classes"


def train_inputs(wildcards):
    inputs = {"data": f"{RESULTS}/data/{wildcards.dataset}.json"}
    if wildcards.n != "full":
        inputs["indices"] = indices_path(wildcards.dataset, wildcards.n)
    return inputs


def indices_option(wildcards):
    """--indices FILE as a list of arguments (quoted one by one by {params.indices:q})."""
    if wildcards.n == "full":
        return []
    return ["--indices", indices_path(wildcards.dataset, wildcards.n)]


def lr_runs(wildcards):
    return [
        f"{run_dir(wildcards.arch, wildcards.dataset, wildcards.n, lr)}/model.pt"
        for lr in config["datasets"][wildcards.dataset]["lrs"]
    ]


def spectrum_inputs(wildcards, variant=None):
    """A spectrum job's inputs; ``variant``: whose settings (default: the wildcard's)."""
    inputs = {
        "model": model_path(wildcards.arch, wildcards.dataset, wildcards.n),
        "data": f"{RESULTS}/data/{wildcards.dataset}.json",
    }
    if wildcards.split == "train" and wildcards.n != "full":
        inputs["indices"] = indices_path(wildcards.dataset, wildcards.n)
    inputs["settings"] = spectrum_settings_path(variant or wildcards.variant)
    return inputs


def spectrum_indices(wildcards):
    """--indices FILE for a subsampled train split, as a list of arguments."""
    if wildcards.split == "train" and wildcards.n != "full":
        return ["--indices", indices_path(wildcards.dataset, wildcards.n)]
    return []


def spectrum_settings_path(variant):
    return f"{RESULTS}/settings/spectrum-{variant}.json"


def spectrum_settings(variant):
    """What `hspec spectrum --settings` reads for a variant: the spectrum options (seed:
    spectrum.seed, not the training seed) and device; the log variant takes log_steps
    Lanczos steps."""
    settings = {key: config[key] if key == "device" else SPECTRUM[key] for key in SPECTRUM_OPTIONS}
    if variant == "log":
        settings["steps"] = SPECTRUM["log_steps"]
    return settings


def write_spectrum_settings():
    """Write each variant's settings file, only where its content changed: the file is an
    input of the spectra, so a changed setting reruns exactly the spectra it affects
    (params do not trigger reruns; an unchanged file keeps its mtime)."""
    for variant in ("plain", "deflated", "log"):
        path = Path(spectrum_settings_path(variant))
        content = json.dumps(spectrum_settings(variant), indent=1, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda file: file.write(content.encode()))


def block_spectra_path(arch, dataset, n, split, component):
    return specs.blocks_path(RESULTS, arch, dataset, n, split, component)


def block_options(wildcards):
    """--blocks [NAME=REGEX ...] from the config's blocks.params (none: per layer)."""
    return ["--blocks"] + [f"{name}={regex}" for name, regex in config["blocks"]["params"].items()]


def selected_models(figures=None):
    """(arch, dataset, n) of every model the configured figures (or those of ``figures``)
    use, in order."""
    models = {}
    for fig, spec in config["figures"].items():
        if figures is not None and fig not in figures:
            continue
        for dataset in spec["datasets"]:
            for n in spec["per_class"]:
                models[(spec["arch"], dataset, str(n))] = None
    return list(models)


# The paper's eq. 11 grid: {train, test} x {H, G, R}, plain, and deflated for H and G.
SPECTRA_GRID = [
    (split, component, variant)
    for split in ("train", "test")
    for component in ("hessian", "gradient_covariance", "prediction_hessian")
    for variant in (("plain", "deflated") if component != "prediction_hessian" else ("plain",))
]


def all_spectra():
    """Every spectrum of the eq. 11 grid for every model the figures select, and the
    per-block spectra of the models of fig7."""
    blocks = config["blocks"]
    return [
        spectrum_path(arch, dataset, n, *cell)
        for arch, dataset, n in selected_models()
        for cell in SPECTRA_GRID
    ] + [
        block_spectra_path(arch, dataset, n, blocks["split"], blocks["component"])
        for arch, dataset, n in selected_models(("fig7",))
    ]


write_spectrum_settings()
