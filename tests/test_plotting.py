"""hspec.figures.drawing, hspec.figures.caption_numbers, hspec.figures.specs, hspec.figures.captions: drawing
helpers, outlier counting, tail fits, the figure → spectra map and the files written."""

import json
import math
import os

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

import hspec
from hspec import HspecError
from hspec.figures import caption_numbers as fn
from hspec.figures import captions
from hspec.figures import drawing as hd
from hspec.figures import specs as fs
from hspec.numerics.density import gaussian_density, smoothing_width
from hspec.pipeline.store import read_result, write_spectrum

SPIKES = [15.0, 20.0, 30.0]


def spiked(p=300, rank=100, spikes=SPIKES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, rank)) / np.sqrt(rank)
    u = np.linalg.qr(rng.standard_normal((p, len(spikes))))[0]
    return x @ x.T + u @ np.diag(spikes) @ u.T


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """{variant: (arrays, attrs)} of a spiked Wishart matrix, plain and deflated (C=5,
    more than the 3 spikes), with one Lanczos run and (``plain2``, ``deflated2``) with two;
    ``paths`` maps each variant to its group."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products: one thread is as fast, and spares a busy machine
    root = tmp_path_factory.mktemp("plotting")
    matrix = torch.tensor(spiked())
    out = {"paths": {}}
    for name, deflate, n_vec in (
        ("plain", 0, 1),
        ("deflated", 5, 1),
        ("plain2", 0, 2),
        ("deflated2", 5, 2),
    ):
        result = hspec.spectral_density(
            lambda v: matrix @ v,
            300,
            dtype=torch.float64,
            steps=48,
            iterations=48,
            deflate=deflate,
            n_vec=n_vec,
        )
        write_spectrum(
            root / f"{name}.zarr",
            result,
            {
                "dataset": "digits",
                "arch": "cnn",
                "split": "train",
                "component": "hessian",
                "n_per_class": 20,
                "n_samples": 200,
            },
        )
        out[name] = fs.load(root / f"{name}.zarr")
        out["paths"][name] = root / f"{name}.zarr"
    out["exact"] = np.linalg.eigvalsh(matrix.numpy())
    torch.set_num_threads(threads)
    return out


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 2])
    stem = tmp_path / "deep" / "fig1"
    paths = hd.save_figure(fig, stem)
    assert [p.name for p in paths] == ["fig1.png", "fig1.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    hd.save_figure(fig, stem)  # replaces, leaves no temporary file
    assert sorted(p.name for p in stem.parent.iterdir()) == ["fig1.pdf", "fig1.png"]


def test_floor_density_clips_for_a_log_scale():
    density = np.array([0.0, 1e-12, 0.5, 2.0])
    clipped, level = hd.floor_density(density, 1e-8)
    assert level == pytest.approx(2e-8)
    assert np.all(clipped >= level) and clipped[-1] == 2.0
    assert hd.floor_density(density, 1e-8, at_most=1e-10)[1] == 1e-10
    assert hd.floor_density(density, 1e-8, at_most=1.0)[1] == pytest.approx(2e-8)
    with pytest.raises(HspecError):
        hd.floor_density(np.zeros(3))


def test_mark_outliers_puts_markers_at_the_values():
    ax = Figure().subplots()
    stems = hd.mark_outliers(ax, [3.0, 5.0], height=0.1, bottom=1e-6)
    assert list(stems.get_xdata()) == [3.0, 5.0] and list(stems.get_ydata()) == [0.1, 0.1]
    ticks = hd.mark_outliers(ax, [7.0])
    assert list(ticks.get_xdata()) == [7.0]
    assert ticks.get_transform() == ax.get_xaxis_transform()  # y in axes fraction


def test_plot_density_log_scale_floor_and_outlier_positions(stored):
    arrays, attrs = stored["deflated"]
    ax = Figure().subplots()
    drawn = hd.plot_density(ax, arrays, attrs)
    assert ax.get_yscale() == "log"
    assert ax.get_ylim()[0] == pytest.approx(drawn["floor"])
    assert np.all(drawn["line"].get_ydata() >= drawn["floor"])
    markers = {tuple(line.get_xdata()) for line in ax.lines[1:]}
    assert tuple(arrays["outliers"]) in markers  # the 5 deflated outliers, as stems
    assert tuple(drawn["separated"]) in markers  # the 3 separated ones, along the top
    assert len(drawn["separated"]) == 3
    lo, hi = ax.get_xlim()
    assert lo <= arrays["grid"][0] and hi >= arrays["outliers"].max()
    assert "digits" in ax.get_title() and "Hessian" in ax.get_title()
    assert "deflated (C=5)" in ax.get_title()


def test_separated_counts_spikes_with_and_without_deflation(stored):
    exact = stored["exact"]
    for variant in ("plain", "deflated"):
        found = fn.separated(*stored[variant])
        np.testing.assert_allclose(found, exact[::-1][:3], rtol=1e-6)
    # deflation of C=5 > 3 spikes: two deflated values touch the bulk and do not count
    assert len(stored["deflated"][0]["outliers"]) == 5


def test_separated_ignores_ghosts_and_weightless_ritz_values(stored):
    arrays, attrs = stored["plain"]
    top = arrays["nodes"].max()
    gap = (stored["exact"][-4] + stored["exact"][-3]) / 2  # between the bulk and a spike
    ghosts = dict(arrays)
    ghosts["nodes"] = np.concatenate([arrays["nodes"], [top * (1 + 1e-9), gap]])
    ghosts["weights"] = np.concatenate([arrays["weights"], [1e-3 / 300, 1e-31]])
    np.testing.assert_allclose(fn.separated(ghosts, attrs), fn.separated(arrays, attrs))


def test_atom_height_is_the_bump_of_one_deflated_outlier(stored):
    arrays, attrs = stored["deflated"]
    top = arrays["outliers"][0]
    bump = gaussian_density(
        np.array([top]), np.array([1 / attrs["n_params"]]), np.array([top]), fn.kernel_width(attrs)
    )
    assert bump[0] == pytest.approx(fn.atom_height(attrs), rel=1e-9)
    assert fn.kernel_width(attrs) == pytest.approx(smoothing_width(48) * attrs["bulk_d"])


def test_bulk_edges_leave_out_the_outliers(stored):
    for variant in ("plain", "deflated"):
        lo, hi = fn.bulk_edges(*stored[variant])
        assert lo == pytest.approx(0.0, abs=0.1)
        assert 5.0 < hi < 10.0  # the Wishart bulk ends near 7.5, the spikes at 15+


def quadrature_attrs(n, steps=256):
    return {
        "n_params": n,
        "settings": {"steps": steps, "k": 1.25},
        "bulk_d": 1.0,
        "bulk_c": 0.0,
        "lambda_min": -1.0,
        "lambda_max": 1.0,
    }


def power_law_quadrature(b=2.5, x0=0.1, x1=10.0, n=4000, zeros=0.0, zero_at=1e-6):
    """An exact symmetric quadrature: ±x at the quantiles of x^(−b) on [x0, x1], plus a
    share of near-zero eigenvalues at ±zero_at."""
    q = (np.arange(n) + 0.5) / n
    lo, hi = x0 ** (1 - b), x1 ** (1 - b)
    x = (lo + q * (hi - lo)) ** (1 / (1 - b))
    nodes = np.concatenate([x, -x, [zero_at, -zero_at]])
    weights = np.concatenate([np.full(2 * n, (1 - zeros) / (2 * n)), [zeros / 2] * 2])
    return {
        "nodes": nodes,
        "weights": weights,
        "outliers": np.empty(0),
        "grid": np.linspace(-1, 1, 5),
        "density": np.ones(5),
    }


@pytest.mark.parametrize("zeros", [0.0, 0.6])
def test_auto_fit_recovers_a_power_law_and_ignores_the_mass_at_zero(zeros):
    arrays = power_law_quadrature(zeros=zeros)
    attrs = quadrature_attrs(len(arrays["nodes"]))
    fit = fn.fit_tail(arrays, attrs, 1)
    assert fit["b"] == pytest.approx(2.5, abs=0.05) and fit["r2"] > 0.99
    # the decade below the point above which lie 30 eigenvalues' mass
    above = attrs["n_params"] * arrays["weights"][arrays["nodes"] > fit["hi"]].sum()
    assert fit["lo"] == pytest.approx(fit["hi"] / 10) and 29 < above <= 30
    assert fit["interval"][0] < 2.5 < fit["interval"][1]
    assert fit["rule"].startswith("automatic")
    negative = fn.fit_tail(arrays, attrs, -1)
    assert negative["b"] == pytest.approx(fit["b"], abs=1e-6)
    assert fn.asymmetry(arrays, attrs) == pytest.approx(0.0, abs=1e-9)


def test_fit_uses_a_given_range_and_reports_failures():
    arrays = power_law_quadrature()
    attrs = quadrature_attrs(len(arrays["nodes"]))
    fit = fn.fit_tail(arrays, attrs, 1, [0.3, 2.0])
    assert (fit["lo"], fit["hi"], fit["rule"]) == (0.3, 2.0, "given")
    assert fit["b"] == pytest.approx(2.5, abs=0.05)
    failed = fn.fit_tail(arrays, attrs, 1, [100.0, 200.0])  # no density there
    assert "error" in failed and hd.plot_fit(Figure().subplots(), failed) is None
    line = hd.plot_fit(Figure().subplots(), fit)
    assert line.get_xdata()[0] == pytest.approx(0.3)


def test_log_tail_is_a_density_in_lambda():
    def positive_mass(zero_at):
        arrays = power_law_quadrature(zeros=0.5, zero_at=zero_at)
        x, phi = fn.log_tail(arrays, quadrature_attrs(len(arrays["nodes"])), 1)
        return np.sum((phi[1:] + phi[:-1]) / 2 * np.diff(x))

    # the grid spans 8 decades below the top (10): zeros at 1e-6 are on it, at 1e-9 not
    assert positive_mass(1e-6) == pytest.approx(0.5, rel=0.02)
    assert positive_mass(1e-9) == pytest.approx(0.25, rel=0.02)
    arrays = power_law_quadrature(zeros=0.5)
    attrs = quadrature_attrs(len(arrays["nodes"]))
    ax = Figure().subplots()
    drawn = hd.plot_log_density(ax, arrays, attrs, sign=-1)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert drawn["line"].get_color() == hd.SIGN_COLORS[-1]


def test_asymmetry_of_a_one_signed_spectrum_is_one(stored):
    assert fn.asymmetry(*stored["plain"]) == pytest.approx(1.0, abs=1e-6)


def test_spectrum_numbers_and_summary(stored):
    numbers = fn.spectrum_numbers(*stored["deflated"], path="x.zarr")
    assert numbers["gap_heuristic_outliers"] == 3 and numbers["num_classes"] == 10
    assert numbers["gap_heuristic_equals_classes"] is False
    assert numbers["outliers_explained"] is None  # stored without an attribution
    assert len(numbers["deflated_outliers"]) == 5 and numbers["deflate"] == 5
    assert numbers["component"] == "hessian" and numbers["path"] == "x.zarr"
    assert fn.spectrum_numbers(*stored["deflated"], classes=3)["gap_heuristic_equals_classes"]
    line = fn.summary("digits", numbers)
    assert "gap-heuristic outliers: 3 (classes: 10; differs from C)" in line
    assert "explained by the class means: n/a" in line


def test_write_numbers_sorted_plain_json(tmp_path):
    path = fn.write_numbers(
        {
            "b": np.float32(1.5),
            "a": [np.int64(2), float("nan")],
            "c": {"z": np.bool_(True), "y": np.arange(2.0)},
        },
        tmp_path / "sub" / "numbers.json",
    )
    text = path.read_text()
    assert json.loads(text) == {"a": [2, None], "b": 1.5, "c": {"y": [0.0, 1.0], "z": True}}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert isinstance(json.loads(text)["b"], float)
    assert [p.name for p in path.parent.iterdir()] == ["numbers.json"]


def test_align_and_per_class_value():
    pairs = fn.align([10.0, 5.0], [5.001, 9.0, 10.0])
    assert [p["reference"] for p in pairs] == [10.0, 5.001]
    assert pairs[1]["relative_difference"] == pytest.approx(2e-4)
    assert fn.align([1.0], []) == []
    train = {"split": "train", "dataset": "digits", "n_per_class": "full", "n_samples": 1437}
    assert fn.per_class_value("20", train) == 20.0
    assert fn.per_class_value("full", train) == pytest.approx(143.7)
    assert fn.per_class_value("full", {**train, "split": "test"}) is None


def test_describe_and_num_classes():
    attrs = {
        "dataset": "cifar10",
        "arch": "vgg11",
        "split": "test",
        "component": "prediction_hessian",
        "n_per_class": 2599,
        "settings": {"deflate": 0},
    }
    assert hd.describe(attrs) == (
        "CIFAR10, VGG11, test, averaged Hessian of predictions $R$, 2599/class"
    )
    assert fn.num_classes(attrs) == 10 and fn.num_classes(attrs, 7) == 7
    assert fn.num_classes({"dataset": "unknown", "settings": {"deflate": 4}}) == 4
    assert hd.variant(attrs) == "plain"
    assert not math.isnan(
        fn.atom_height({"n_params": 10, "bulk_d": 2.0, "settings": {"steps": 64}})
    )


# ------------------------------------------------------------- the figure -> spectra map

SPEC = {"arch": "mlp", "datasets": ["digits", "mnist"], "per_class": [20, "full"]}


def test_figure_parameters_honour_every_dataset_and_size():
    def path(d, n, name):
        return f"r/spectra/mlp/{d}/n{n}/{name}.zarr"

    labels = ["digits n=20", "digits n=full", "mnist n=20", "mnist n=full"]
    fig1 = fs.figure_parameters("fig1", SPEC, "r")["spectra"]
    assert list(fig1) == labels
    assert fig1["mnist n=full"] == path("mnist", "full", "train-hessian-plain")
    fig3 = fs.figure_parameters("fig3", SPEC, "r")["panels"]
    assert list(fig3) == labels
    assert fig3["mnist n=20"] == {
        "deflated": path("mnist", 20, "train-hessian-deflated"),
        "plain": path("mnist", 20, "train-hessian-plain"),
    }
    fig4 = fs.figure_parameters("fig4", SPEC, "r")["panels"]
    assert list(fig4) == labels
    assert fig4["digits n=full"]["spectra"]["prediction_hessian"] == path(
        "digits", "full", "test-prediction_hessian-plain"
    )
    assert fig4["digits n=full"]["log_spectra"]["hessian"] == path(
        "digits", "full", "test-hessian-log"
    )
    fig5 = fs.figure_parameters("fig5", SPEC, "r")["panels"]
    assert list(fig5) == ["digits", "mnist"]
    assert fig5["mnist"]["test"] == {
        "20": path("mnist", 20, "test-gradient_covariance-plain"),
        "full": path("mnist", "full", "test-gradient_covariance-plain"),
    }
    one = {"arch": "mlp", "datasets": ["digits"], "per_class": [60]}
    assert list(fs.figure_parameters("fig3", one, "r")["panels"]) == ["digits"]
    with pytest.raises(HspecError, match="unknown figure 'fig9'"):
        fs.figure_parameters("fig9", one, "r")


def test_spectrum_paths_and_papermill_yaml():
    params = fs.figure_parameters("fig4", SPEC, "r")
    paths = fs.spectrum_paths(params)
    assert len(paths) == len(set(paths)) == 4 * 6
    loaded = json.loads(fs.papermill_yaml("fig4", SPEC, "r"))
    assert loaded == {
        **params,
        "figure": "r/figures/fig4/fig4",
        "numbers": "r/figures/fig4/numbers.json",
    }
    paper = {
        "arch": "vgg11",
        "datasets": ["mnist", "fashionmnist", "cifar10"],
        "per_class": ["full"],
    }  # the paper's panel order, not alphabetical
    assert list(json.loads(fs.papermill_yaml("fig1", paper, "r"))["spectra"]) == paper["datasets"]


def test_notebook_defaults_are_relative_to_where_the_notebook_runs(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo.yaml").write_text(
        "results: results/demo\nfigures:\n  fig1: {arch: mlp, datasets: [digits], "
        "per_class: [full]}\n"
    )
    (tmp_path / "notebooks").mkdir()
    inside = fs.notebook_defaults("fig1", tmp_path / "notebooks")
    assert inside["spectra"] == {
        "digits": "../results/demo/spectra/mlp/digits/nfull/train-hessian-plain.zarr"
    }
    assert inside["figure"] == "../results/demo/figures/fig1/fig1"
    assert (
        fs.notebook_defaults("fig1", tmp_path)["numbers"]
        == "results/demo/figures/fig1/numbers.json"
    )
    # outside any copy of the repository: the checkout hspec is installed from, else an error
    assert fs.notebook_defaults("fig1", "/")["figure"] == os.path.relpath(
        fs.CHECKOUT / "results/demo/figures/fig1/fig1", "/"
    )
    monkeypatch.setattr(fs, "CHECKOUT", tmp_path / "not-a-checkout")
    with pytest.raises(HspecError, match="no config/demo.yaml"):
        fs.notebook_defaults("fig1", "/")


def test_a_missing_spectrum_names_the_target_that_writes_it(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo.yaml").write_text("results: results/demo\n")
    missing = tmp_path / "results" / "demo" / "spectra" / "x.zarr"
    with pytest.raises(HspecError) as error:
        fs.load_all({"a": {"b": missing}})
    assert str(error.value).startswith(
        f"{missing}: no such spectrum; it is written by "
        "`snakemake --cores all results/demo/spectra/x.zarr`"
    )
    assert "`make demo`" in str(error.value)


def test_load_all_keeps_the_nesting(stored, tmp_path):
    matrix = torch.tensor(spiked(p=60, rank=20))
    result = hspec.spectral_density(lambda v: matrix @ v, 60, dtype=torch.float64, steps=16)
    write_spectrum(
        tmp_path / "s.zarr",
        result,
        {
            "dataset": "digits",
            "arch": "mlp",
            "split": "train",
            "component": "hessian",
            "n_per_class": 20,
            "n_samples": 200,
        },
    )
    loaded = fs.load_all({"p": {"deflated": tmp_path / "s.zarr"}})
    arrays, attrs = loaded["p"]["deflated"]
    assert attrs["arch"] == "mlp" and arrays["grid"].size > 0


# -------------------------------------------------------------- per-figure logic, tested


def test_zoom_range_and_tail_component_prefer_r(stored):
    plain, deflated = stored["plain"], stored["deflated"]
    reference, (lo, hi) = fn.zoom_range({"hessian": deflated, "prediction_hessian": plain})
    edges = fn.bulk_edges(*plain)
    width = edges[1] - edges[0]
    assert reference == "prediction_hessian"
    assert (lo, hi) == pytest.approx((edges[0] - 0.1 * width, edges[1] + 0.1 * width))
    assert fn.zoom_range({"gradient_covariance": plain, "hessian": deflated})[0] == "hessian"
    assert fn.tail_component(["hessian", "prediction_hessian"]) == "prediction_hessian"
    assert fn.tail_component(["gradient_covariance", "hessian"]) == "gradient_covariance"
    assert fn.ordered_components(["x", "prediction_hessian", "hessian"]) == [
        "hessian",
        "prediction_hessian",
        "x",
    ]


def test_curve_sizes_fall_back_to_train_then_after_the_largest():
    train = {"split": "train", "dataset": "digits", "n_per_class": "full", "n_samples": 600}
    test = {"split": "test", "dataset": "digits", "n_per_class": "full"}
    sizes = fn.curve_sizes(
        {
            "train": {"20": ({}, train), "full": ({}, train)},
            "test": {"full": ({}, test), "odd": ({}, test)},
        }
    )
    assert sizes["train"] == {"20": 20.0, "full": 60.0}
    assert sizes["test"] == {"full": 60.0, "odd": 90.0}  # borrowed; 1.5 x the largest


def test_components_panel_names_a_missing_log_variant(stored):
    with pytest.raises(HspecError, match="fig4: log_spectra has no hessian"):
        fn.components_panel({"hessian": stored["plain"]}, {}, {"hessian": "h"}, {})


def test_share_limits_covers_every_curve(stored):
    axes = Figure().subplots(2)
    drawn = [hd.plot_density(ax, *stored[v]) for ax, v in zip(axes, ("plain", "deflated"))]
    xlim = hd.share_limits(axes, drawn, y=True)
    assert xlim == (min(d["xlim"][0] for d in drawn), max(d["xlim"][1] for d in drawn))
    assert all(ax.get_xlim() == xlim for ax in axes)
    assert axes[0].get_ylim()[0] == pytest.approx(min(d["floor"] for d in drawn))


def test_figures_share_one_look_and_one_panel_per_entry(stored):
    from matplotlib import rcParams

    fig = hd.deflation_figure(
        {
            "a": {"deflated": stored["deflated"], "plain": stored["plain"]},
            "b": {"deflated": stored["deflated"], "plain": stored["plain"]},
        }
    )
    main = fig.axes
    insets = [inset for ax in main for inset in ax.child_axes]
    assert len(main) == 4  # 2 columns x (deflated, plain)
    assert [inset.get_title() for inset in insets] == ["bulk"] * 4
    assert all(ax.get_yscale() == "log" for ax in main + insets)
    colors = [c["color"] for c in rcParams["axes.prop_cycle"]]
    assert [mpl_hex(c) for c in colors[:4]] == hd.PALETTE[:4]
    assert rcParams["axes.titlesize"] == 9
    assert main[0].lines[0].get_color() == hd.BULK_COLOR
    numbers = fn.hessian_numbers("fig1", {"x": stored["deflated"]}, {"x": "x.zarr"})
    assert numbers["spectra"]["x"]["gap_heuristic_outliers"] == 3
    assert "gap-heuristic outliers: 3" in fn.summary_lines(numbers)[0]


def mpl_hex(color):
    from matplotlib.colors import to_hex

    return to_hex(color)


def test_save_figure_leaves_nothing_when_drawing_fails(tmp_path):
    class Broken(Figure):
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(HspecError, match=r"fig1\.png: cannot write the file \(disk full\)"):
        hd.save_figure(Broken(), tmp_path / "fig1")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ captions


@pytest.mark.parametrize("fig", list(fs.NOTEBOOKS))
def test_captions_render_as_restructuredtext_for_the_report(fig):
    from docutils.core import publish_parts

    text = captions.caption(fig)
    assert "numbers are what they are" in text and "MLP" in text and "CNN" not in text
    # the report renders captions as reStructuredText: no warning, no error
    html = publish_parts(
        text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2}
    )["body"]
    assert "system-message" not in html
    assert captions.title(fig).startswith(f"Figure {fig[-1]}:")


def test_fig4_caption_states_the_fit_rule_the_code_uses():
    assert fn.AUTO_FIT_RULE.format(span=1.0).replace("|λ|", "\\|λ\\|") in captions.caption("fig4")


def test_sample_size_figure_puts_train_on_top_whatever_the_order(stored):
    # train: the plain spectrum, test: the deflated one; papermill may sort the keys
    loaded = {"digits": {"test": {"20": stored["deflated"]}, "train": {"20": stored["plain"]}}}
    numbers = fn.sample_size_numbers(
        loaded, {"digits": {"test": {"20": "a"}, "train": {"20": "b"}}}
    )
    top, bottom = hd.sample_size_figure(loaded, numbers).axes[:2]
    assert top.get_title().endswith("[plain]")
    assert bottom.get_title().endswith("[deflated (C=5)]")


def test_components_figure_draws_a_one_signed_tail(stored):
    arrays, attrs = stored["plain"]
    positive = ({**arrays, "nodes": np.abs(arrays["nodes"]) + 1e-3}, attrs)  # no λ < 0
    spectra = {"hessian": stored["deflated"], "prediction_hessian": positive}
    loaded = {"digits": {"spectra": spectra, "log_spectra": spectra}}
    numbers = fn.components_numbers(
        loaded,
        {
            "digits": {
                "spectra": dict.fromkeys(spectra, "p"),
                "log_spectra": dict.fromkeys(spectra, "q"),
            }
        },
    )
    assert "error" in numbers["panels"]["digits"]["fit_negative"]
    fig = hd.components_figure(loaded, numbers)
    tail = [ax for ax in fig.axes if ax.get_title().startswith("(d)")]
    assert len(tail) == 1 and len(tail[0].get_legend().get_texts()) >= 1


# ------------------------------------------------------------ bands, errors, provenance


def bands(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


@pytest.mark.parametrize("variant", ["plain2", "deflated2"])
def test_plot_density_shades_the_band_of_the_stored_runs(stored, variant):
    arrays, attrs = stored[variant]
    ax = Figure().subplots()
    drawn = hd.plot_density(ax, arrays, attrs)
    assert bands(ax) == [drawn["band"]]
    grid, lower, upper = read_result(stored["paths"][variant]).band(0.9)
    assert np.all(lower <= arrays["density"] + 1e-12) and np.all(arrays["density"] <= upper + 1e-12)
    assert np.any(upper - lower > 1e-6 * arrays["density"].max())  # two runs differ
    vertices = drawn["band"].get_paths()[0].vertices
    np.testing.assert_allclose(
        [vertices[:, 0].min(), vertices[:, 0].max()], [grid[0], grid[-1]], rtol=1e-12
    )
    np.testing.assert_allclose(vertices[:, 1].max(), upper.max(), rtol=1e-12)
    np.testing.assert_allclose(vertices[:, 1].min(), max(lower.min(), drawn["floor"]), rtol=1e-12)
    assert mpl_hex(drawn["band"].get_facecolor()[0][:3]) == hd.BULK_COLOR
    assert drawn["band"].get_alpha() == hd.BAND_ALPHA


def test_one_run_draws_no_band(stored):
    ax = Figure().subplots()
    assert hd.plot_density(ax, *stored["plain"])["band"] is None and bands(ax) == []
    assert hd.plot_log_density(ax, *stored["plain"])["band"] is None and bands(ax) == []
    fig = hd.hessian_figure({"a": stored["deflated"]}, "t")
    assert all(bands(ax) == [] for ax in fig.axes)


def test_hessian_figure_shades_panel_and_inset(stored):
    fig = hd.hessian_figure({"a": stored["plain2"], "b": stored["deflated"]}, "t")
    panel_a, panel_b = fig.axes[:2]
    assert len(bands(panel_a)) == 1 and len(bands(panel_a.child_axes[0])) == 1
    assert bands(panel_b) == [] and bands(panel_b.child_axes[0]) == []
    assert "90% band (2 runs)" in [t.get_text() for t in panel_a.get_legend().get_texts()]


def test_log_band_brackets_the_pooled_tail(stored):
    arrays, attrs = stored["plain2"]
    ax = Figure().subplots()
    drawn = hd.plot_log_density(ax, arrays, attrs, sign=1)
    x, lower, upper = fn.log_tail_band(arrays, attrs, 1)
    np.testing.assert_array_equal(x, drawn["x"])
    # the pooled curve is the mean of the runs' curves (up to their interpolation)
    inside = drawn["phi"] > 1e-3 * drawn["phi"].max()
    centre = (lower + upper) / 2
    np.testing.assert_allclose(centre[inside], drawn["phi"][inside], rtol=0.05)
    assert len(bands(ax)) == 1


def duplicated_run(arrays):
    """The arrays of a result whose two runs are both its run 0."""
    run = fn.run_arrays(arrays, 0)
    nodes, weights = run["nodes"], run["weights"] / 2
    return {
        **arrays,
        "nodes": np.concatenate([nodes, nodes]),
        "weights": np.concatenate([weights, weights]),
        "runs": np.repeat([0, 1], nodes.size),
    }


def test_a_run_alone_is_a_whole_estimate(stored):
    arrays, attrs = stored["deflated2"]
    assert fn.n_runs(arrays) == 2 and fn.n_runs(stored["deflated"][0]) == 1
    masses = [fn.run_arrays(arrays, run)["weights"].sum() for run in (0, 1)]
    np.testing.assert_allclose(masses, arrays["weights"].sum(), rtol=1e-12)
    # two identical runs: every spread is 0 and every per-run value the pooled one
    twin = duplicated_run(arrays)
    errors = fn.run_errors(twin, attrs)
    pooled = fn.bulk_edges(twin, attrs)
    for edge, value in zip(errors["bulk_edges"], pooled):
        assert edge["standard_error"] == 0 and edge["value"] == pytest.approx(value, rel=1e-12)
    assert errors["asymmetry"]["standard_error"] == 0
    np.testing.assert_allclose(
        fn.log_tail(fn.run_arrays(twin, 1), attrs)[1], fn.log_tail(twin, attrs)[1], rtol=1e-9
    )
    fit = fn.fit_tail(twin, attrs, 1)
    twin_fit = fn.fit_errors(twin, attrs, fit)
    assert twin_fit["b"]["runs"] == pytest.approx([fit["b"]] * 2, rel=1e-9)


def eight_runs(seed=0):
    """Arrays of 8 Lanczos runs of 20 random nodes each (weights summing to 1/8 per run)."""
    rng = np.random.default_rng(seed)
    return {
        "nodes": rng.normal(size=160),
        "weights": np.full(160, 1 / 160),
        "runs": np.repeat(np.arange(8), 20),
        "outliers": np.empty(0),
    }


def test_resampled_errors_of_a_linear_number_are_those_of_the_mean():
    arrays = eight_runs()

    def first_moment(a):  # linear in the runs: the pooled value is the mean of the runs'
        return np.sum(a["weights"] * a["nodes"])

    (error,) = fn.resampled(first_moment, arrays)
    runs = np.array(error["runs"])
    np.testing.assert_allclose(runs, [first_moment(fn.run_arrays(arrays, r)) for r in range(8)])
    assert error["value"] == pytest.approx(runs.mean(), rel=1e-12)
    assert error["standard_error"] == pytest.approx(runs.std(ddof=1) / math.sqrt(8), rel=1e-9)
    half = 1.8946 * error["standard_error"]  # t_0.95 with 7 degrees of freedom
    assert error["interval_t"] == pytest.approx([runs.mean() - half, runs.mean() + half], rel=1e-3)
    lo, hi = error["interval_bootstrap"]
    assert lo < error["value"] < hi and hi - lo < 2 * half
    # pooled runs carry the pooled mass: the statistic of all 8 runs is the pooled one
    assert first_moment(fn.pool_arrays(arrays, range(8))) == pytest.approx(first_moment(arrays))
    assert fn.pool_arrays(arrays, [3, 3])["weights"].sum() == pytest.approx(1.0)


def test_numbers_carry_errors_certificates_and_provenance(stored, tmp_path):
    arrays, attrs = stored["deflated2"]
    result = read_result(stored["paths"]["deflated2"])
    numbers = fn.hessian_numbers("fig1", {"x": stored["deflated2"]}, {"x": "x.zarr"})
    path = fn.write_numbers(numbers, tmp_path / "numbers.json")
    written = json.loads(path.read_text())
    values = written["spectra"]["x"]
    assert values["n_vec"] == 2 and values["band"]["level"] == 0.9
    assert values["band"]["median_relative_width"] > 0
    certificates = values["outlier_certificates"]
    np.testing.assert_allclose([c["value"] for c in certificates], result.outliers)
    np.testing.assert_allclose([c["residual"] for c in certificates], result.residuals)
    np.testing.assert_allclose(
        [c["interval"] for c in certificates], np.stack(result.outlier_intervals(), axis=1)
    )
    np.testing.assert_allclose([c["error_bound"] for c in certificates], result.error_bounds)
    assert [c["converged"] for c in certificates] == result.converged.tolist()
    assert values["unconverged_outliers"] == result.outliers[~result.converged].tolist()
    assert values["provenance"] == json.loads(json.dumps(result.provenance))
    assert {"git_commit", "torch", "numpy", "zarr", "device", "host", "started", "seconds"} <= set(
        values["provenance"]
    )
    errors = values["errors"]
    per_run = [fn.bulk_edges(fn.run_arrays(arrays, run), attrs) for run in (0, 1)]
    np.testing.assert_allclose(errors["bulk_edges"][1]["runs"], [e[1] for e in per_run])
    upper = errors["bulk_edges"][1]
    assert upper["standard_error"] == pytest.approx(abs(per_run[0][1] - per_run[1][1]) / 2)
    assert upper["value"] == pytest.approx(fn.bulk_edges(arrays, attrs)[1], rel=1e-12)
    assert upper["interval_t"][0] < upper["value"] < upper["interval_t"][1]
    assert errors["gap_heuristic_outliers"]["runs"] == [3, 3]
    assert written["band_level"] == 0.9 and written["figure_provenance"]["written"]
    single = fn.spectrum_numbers(*stored["deflated"])
    assert single["n_vec"] == 1 and single["errors"] is None and single["band"] is None
    assert len(single["outlier_certificates"]) == 5


def test_an_unconverged_outlier_is_marked(stored):
    arrays, attrs = stored["deflated"]
    flagged = {**arrays, "converged": np.array([False] + [True] * 4)}
    numbers = fn.hessian_numbers("fig1", {"x": (flagged, attrs)}, {"x": "x.zarr"})
    assert numbers["spectra"]["x"]["unconverged_outliers"] == [arrays["outliers"][0]]
    assert any("1 unconverged" in line for line in fn.summary_lines(numbers))
    assert "**Unconverged outliers**" in captions.measured(numbers)
    assert f"{arrays['outliers'][0]:.4g}" in captions.measured(numbers)
    ax = Figure().subplots()
    hd.plot_density(ax, flagged, attrs)
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [arrays["outliers"][0]]
    converged = {**arrays, "converged": np.ones(5, dtype=bool)}
    hd.plot_density(ax := Figure().subplots(), converged, attrs)
    assert not [line for line in ax.lines if line.get_marker() == "x"]


def test_the_notebook_text_says_what_the_band_shows(stored):
    arrays, attrs = stored["deflated"]
    # C = 5 > 3 spikes: the two deflated values at the bulk's edge have not converged
    assert arrays["converged"].tolist() == [True] * 3 + [False] * 2
    one = fn.hessian_numbers("fig1", {"x": stored["deflated"]}, {"x": "x.zarr"})
    text = captions.measured(one)
    assert "one Lanczos run (n_vec = 1): no band" in text
    assert "**Unconverged outliers**" in text and f"{arrays['outliers'][4]:.4g}" in text
    converged = ({**arrays, "converged": np.ones(5, dtype=bool)}, attrs)
    text = captions.measured(fn.hessian_numbers("fig1", {"x": converged}, {"x": "x"}))
    assert "All 5 deflated outliers converged" in text
    two = fn.hessian_numbers(
        "fig1", {"x": stored["plain2"], "y": stored["plain"]}, {"x": "x", "y": "y"}
    )
    text = captions.measured(two)
    width = two["spectra"]["x"]["band"]["median_relative_width"]
    assert f"x: 2 runs, {width:.1%} of the density" in text
    assert "Spectra with one run carry no band: spectra/y." in text
    assert "No spectrum here was deflated" in text
    assert stored["deflated"][1]["provenance"]["git_commit"][:12] in captions.measured(one)


def test_fig4_numbers_give_the_exponent_across_runs(stored):
    spectra = {"hessian": stored["deflated2"], "prediction_hessian": stored["plain2"]}
    loaded = {"digits": {"spectra": spectra, "log_spectra": spectra}}
    names = dict.fromkeys(spectra, "p")
    numbers = fn.components_numbers(loaded, {"digits": {"spectra": names, "log_spectra": names}})
    panel = numbers["panels"]["digits"]
    b = panel["fit_errors"]["b"]
    assert len(b["runs"]) == 2 and b["interval_t"][0] < b["value"] < b["interval_t"][1]
    assert b["value"] == pytest.approx(panel["fit"]["b"], rel=1e-9)
    assert panel["fit_errors"]["range"] == panel["fit_range"]
    # λ < 0: only the rounding-level Ritz values of the zero eigenvalues, one atom a run
    assert "mass sits at one end" in panel["fit_negative"]["error"]
    assert panel["fit_negative_errors"] is None
    assert any("band" in line for line in fn.summary_lines(numbers))
    fig = hd.components_figure(loaded, numbers)
    assert sum(len(bands(ax)) for ax in fig.axes) >= 6


# ------------------------------------------------------------------ the paper's claims


def test_figure_numbers_carry_the_claims(stored):
    from hspec.numerics import claims

    test, train = stored["deflated2"], stored["plain2"]
    numbers = fn.hessian_numbers("fig2", {"x": test}, {"x": "t"}, train={"x": train})
    expected = claims.magnitude_ratio(
        read_result(stored["paths"]["plain2"]), read_result(stored["paths"]["deflated2"])
    )
    ratio = numbers["magnitude_ratio"]["x"]
    assert ratio == expected and ratio["top"]["ratio"] == pytest.approx(1.0)  # one matrix
    law = numbers["bulk_law"]["x"]
    assert law == claims.bulk_law(*fn.bulk_quadrature(*test))
    assert law["preferred"] in ("marchenko-pastur", "heavy-tailed")
    lines = fn.summary_lines(numbers)
    assert any(line.startswith("  bulk of x: " + law["preferred"]) for line in lines)
    assert any("test/train magnitude of x: top eigenvalue 1; mean " in line for line in lines)
    assert "**The paper's claims, measured**" in captions.measured(numbers)
    # without the train spectra (Fig. 1) no ratio; a result without runs gives a reason
    assert "magnitude_ratio" not in fn.hessian_numbers("fig1", {"x": test}, {"x": "t"})
    one = fn.magnitude_ratio(({**train[0], "runs": np.empty(0)}, train[1]), test)
    assert "error" in one


def test_fig4_numbers_carry_the_symmetry_of_the_tail(stored):
    from hspec.numerics import claims

    spectra = {"hessian": stored["deflated2"], "prediction_hessian": stored["plain2"]}
    names = dict.fromkeys(spectra, "p")
    numbers = fn.components_numbers(
        {"d": {"spectra": spectra, "log_spectra": spectra}},
        {"d": {"spectra": names, "log_spectra": names}},
    )
    panel = numbers["panels"]["d"]
    assert panel["symmetry"] == claims.symmetry(read_result(stored["paths"]["plain2"]))
    assert panel["symmetry"]["n_vec"] == 2 and panel["symmetry"]["standard_error"] > 0
    assert list(panel["bulk_law"]) == ["hessian"]  # H and G only, not R
    assert any(
        line.startswith("  symmetry of panels/d: asymmetry") for line in fn.summary_lines(numbers)
    )


# ------------------------------------------------------------------- per-block spectra


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """A blocks group of the two diagonal blocks (rows 0-149, 150-299) of the spiked
    matrix, and the whole matrix's spectrum, with the exact eigenvalues of each."""
    from hspec.pipeline.store import write_blocks

    root = tmp_path_factory.mktemp("blocks")
    matrix = spiked()
    attrs = {
        "dataset": "digits",
        "arch": "mlp",
        "split": "train",
        "component": "hessian",
        "n_per_class": "full",
        "n_samples": 200,
    }
    parts = {"first": matrix[:150, :150], "second": matrix[150:, 150:]}

    def estimate(m):
        op = torch.tensor(np.ascontiguousarray(m))
        return hspec.spectral_density(
            lambda v: op @ v, len(op), dtype=torch.float64, steps=48, n_vec=16
        )

    write_blocks(
        root / "b.zarr",
        {name: (estimate(m), {**attrs, "param_names": [name]}) for name, m in parts.items()},
        attrs,
    )
    write_spectrum(root / "whole.zarr", estimate(matrix), attrs)
    paths = {"blocks": str(root / "b.zarr"), "whole": str(root / "whole.zarr")}
    exact = {name: np.linalg.eigvalsh(m) for name, m in {**parts, "whole": matrix}.items()}
    return fs.load_all({"digits": paths}), {"digits": paths}, exact


def test_blocks_numbers_check_the_partition_interlacing_and_traces(blocks):
    loaded, paths, exact = blocks
    panel = fn.blocks_numbers(loaded, paths)["panels"]["digits"]
    assert panel["params_partition"] is True and panel["all_interlaced"] is True
    for name in ("first", "second"):
        block = panel["blocks"][name]
        assert block["extremes"][1] == pytest.approx(exact[name][-1], rel=1e-8)
        assert block["extremes"][1] < exact["whole"][-1]  # the spikes are spread over both
        assert block["trace"] == pytest.approx(exact[name].sum(), rel=0.2)
    assert panel["whole"]["extremes"][1] == pytest.approx(exact["whole"][-1], rel=1e-8)
    assert panel["trace_of_blocks"] == pytest.approx(np.trace(spiked()), rel=0.2)
    lines = fn.blocks_summary_lines(fn.blocks_numbers(loaded, paths))
    assert lines[0] == "[digits]" and "blocks partition the parameters: True" in lines
    # a block outside the whole spectrum's range breaks interlacing
    spectra, root = loaded["digits"]["blocks"]
    arrays, attrs = spectra["first"]
    moved = {**spectra, "first": ({**arrays, "nodes": arrays["nodes"] + 100.0}, attrs)}
    broken = fn.blocks_panel((moved, root), loaded["digits"]["whole"], paths["digits"])
    assert broken["blocks"]["first"]["interlaced"] is False and broken["all_interlaced"] is False


def test_blocks_figure_draws_every_block_over_the_whole(blocks):
    loaded, paths, _ = blocks
    fig = hd.blocks_figure(loaded, fn.blocks_numbers(loaded, paths))
    density, extremes = fig.axes[:2]
    assert [line.get_label() for line in density.get_lines()] == [
        "whole model",
        "first (150)",
        "second (150)",
    ]
    assert len(extremes.patches) == 2 and density.get_yscale() == "log"


def test_fig7_parameters_follow_the_blocks_settings():
    spec = {"arch": "transformer", "datasets": ["tokens"], "per_class": ["full"]}
    panel = fs.figure_parameters("fig7", spec, "r", {"split": "test"})["panels"]["tokens"]
    assert panel == {
        "blocks": "r/spectra/transformer/tokens/nfull/test-hessian-blocks.zarr",
        "whole": "r/spectra/transformer/tokens/nfull/test-hessian-plain.zarr",
    }
