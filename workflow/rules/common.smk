# Paths and the per-figure choice of spectra. Every output lives under config["results"].

from hspec import captions, figure_specs
from hspec.config import check
from hspec.data import num_classes

RESULTS = config["results"]
SPECTRUM = config["spectrum"]
GPU = 1 if config["device"].startswith("cuda") else 0
FIGURE_FILES = ("ipynb", "html", "png", "pdf")
NOTEBOOKS = {fig: f"notebooks/{name}.ipynb" for fig, name in figure_specs.NOTEBOOKS.items()}


wildcard_constraints:
    arch="[a-z0-9]+",
    dataset="[a-z0-9]+",
    n=r"full|\d+",
    lr=r"[0-9.e-]+",
    split="train|test",
    component="hessian|gradient_covariance|prediction_hessian",
    variant="plain|deflated|log",
    fig="fig[1-5]",


check(config)


def run_dir(arch, dataset, n, lr):
    return f"{RESULTS}/runs/{arch}/{dataset}/n{n}/lr{lr}"


def model_path(arch, dataset, n):
    return f"{RESULTS}/models/{arch}/{dataset}/n{n}/model.pt"


def spectrum_path(arch, dataset, n, split, component, variant):
    return f"{RESULTS}/spectra/{arch}/{dataset}/n{n}/{split}-{component}-{variant}.zarr"


def indices_path(dataset, n):
    return f"{RESULTS}/subsets/{dataset}/n{n}.npy"


def figure_stem(fig):
    return f"{RESULTS}/figures/{fig}/{fig}"


def figure_outputs(fig):
    return [f"{figure_stem(fig)}.{ext}" for ext in FIGURE_FILES] + [
        figure_specs.figure_files(fig, RESULTS)["numbers"]
    ]


def all_figure_targets():
    return [path for fig in config["figures"] for path in figure_outputs(fig)]


def figure_parameters(fig):
    """The notebook's parameters: hspec.figure_specs.figure_parameters, the one map."""
    return figure_specs.figure_parameters(fig, config["figures"][fig], RESULTS)


def figure_inputs(wildcards):
    """The spectrum groups a figure reads (every path among its parameters)."""
    return figure_specs.spectrum_paths(figure_parameters(wildcards.fig))


def figure_yaml(wildcards):
    """papermill -y: the parameters plus where to write the figure and its numbers."""
    return figure_specs.papermill_yaml(wildcards.fig, config["figures"][wildcards.fig],
                                       RESULTS)


def figure_caption(wildcards):
    """The figure's caption (hspec.captions), for the report."""
    return f"**{captions.title(wildcards.fig)}**\n\n{captions.caption(wildcards.fig)}"


def train_inputs(wildcards):
    inputs = {"data": f"{RESULTS}/data/{wildcards.dataset}.json"}
    if wildcards.n != "full":
        inputs["indices"] = indices_path(wildcards.dataset, wildcards.n)
    return inputs


def indices_option(wildcards):
    if wildcards.n == "full":
        return ""
    return f"--indices {indices_path(wildcards.dataset, wildcards.n)}"


def lr_runs(wildcards):
    return [
        f"{run_dir(wildcards.arch, wildcards.dataset, wildcards.n, lr)}/model.pt"
        for lr in config["datasets"][wildcards.dataset]["lrs"]
    ]


def spectrum_inputs(wildcards):
    inputs = {
        "model": model_path(wildcards.arch, wildcards.dataset, wildcards.n),
        "data": f"{RESULTS}/data/{wildcards.dataset}.json",
    }
    if wildcards.split == "train" and wildcards.n != "full":
        inputs["indices"] = indices_path(wildcards.dataset, wildcards.n)
    return inputs


def spectrum_indices(wildcards):
    if wildcards.split == "train" and wildcards.n != "full":
        return f"--indices {indices_path(wildcards.dataset, wildcards.n)}"
    return ""
