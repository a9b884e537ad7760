"""The figures' drawing, in one look: densities on a log y-axis, outliers marked.

Conventions (as in the paper):

* the x-axis is denormalized (the eigenvalue λ itself);
* densities are drawn on a log y-scale, clipped at ``floor``·max so that the log works;
* deflated outliers, which are not part of the stored bulk density, are drawn as stems
  at their positions, as tall as the smoothed bump one eigenvalue of mass 1/n_params
  would make with the bulk's kernel (so they compare with the bumps of a spectrum
  computed without deflation);
* outliers *separated* from the bulk (the count the captions quote) are marked with
  small triangles along the top of the axes; a deflated outlier flagged unconverged
  (:mod:`hspec.numerics.certify`) gets a black cross on its stem;
* Figs. 1–3 carry an inset zooming on the bulk (its edges widened by 10 %);
* a spectrum computed with n_vec ≥ 2 Lanczos runs gets its pointwise 90 % band across
  runs (:func:`hspec.figures.caption_numbers.density_band`, the t band of
  ``SpectralDensity.band``), shaded in the curve's colour; log–log panels too
  (:func:`hspec.figures.caption_numbers.log_tail_band`).

The style is set once, by :func:`apply_style` (seaborn's ``ticks`` theme in the
``paper`` context with the colour-blind palette); every figure function calls it. The
figure functions (:func:`hessian_figure`, :func:`deflation_figure`,
:func:`components_figure`, :func:`sample_size_figure`) make their figure with pyplot, so
that a notebook shows it inline; the helpers draw on axes they are given.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns

from hspec.atomic import atomic_write
from hspec.errors import HspecError
from hspec.figures import caption_numbers as fn
from hspec.pipeline.store import attribution_of

PALETTE = sns.color_palette("colorblind").as_hex()
BULK_COLOR = PALETTE[0]
OUTLIER_COLOR = PALETTE[3]
SIGN_COLORS = {1: PALETTE[3], -1: PALETTE[0]}  # Fig. 4d: positive red, negative blue
SIZE_CMAP = "viridis"  # Fig. 5: examples per class, on a log scale
#: Fig. 6: the parts of G marked above the density, each in a band of its own (axes units)
PART_MARKS = {
    "class_g0": ("$G_0$", PALETTE[2], (0.66, 0.72)),
    "class_g1": ("$G_1$", PALETTE[3], (0.74, 0.80)),
    "class_g2": ("$G_2$", PALETTE[4], (0.82, 0.88)),
    "class_g1_g2": ("$G_1+G_2$", PALETTE[1], (0.90, 0.96)),
}
#: Fig. 6: the parts matched against the outliers, as drawn below the spectra
MATCH_STYLES = (("$G_1$", PALETTE[3]), ("$G_0+G_1+G_2$", PALETTE[0]))
DEFAULT_FLOOR = 1e-8
BAND_ALPHA = 0.3
COMPONENT_NAMES = {
    "hessian": "Hessian $H$",
    "gradient_covariance": "covariance of gradients $G$",
    "prediction_hessian": "averaged Hessian of predictions $R$",
}
DATASET_NAMES = {
    "digits": "digits",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
ARCH_NAMES = {"mlp": "MLP", "cnn": "CNN", "vgg11": "VGG11", "resnet18": "ResNet18"}


def apply_style() -> None:
    """The one look of every figure: seaborn's theme, set on matplotlib's rcParams."""
    sns.set_theme(
        context="paper",
        style="ticks",
        palette=PALETTE,
        rc={"axes.titlesize": 9, "legend.fontsize": 7, "savefig.dpi": 150},
    )


def _new_figure(**kwargs):
    import matplotlib.pyplot as plt  # here, not at import: notebooks pick the backend

    apply_style()
    return plt.figure(layout="constrained", **kwargs)


# ------------------------------------------------------------------------------ titles


def variant(attrs: Mapping) -> str:
    """'deflated (C=…)' or 'plain', from the stored settings."""
    deflate = int(fn._settings(attrs).get("deflate", 0) or 0)
    return f"deflated (C={deflate})" if deflate else "plain"


def describe(
    attrs: Mapping,
    *,
    dataset: bool = True,
    arch: bool = True,
    split: bool = True,
    component: bool = True,
    size: bool = True,
) -> str:
    """A title naming dataset, arch, split, component and examples per class."""
    parts = []
    if dataset:
        parts.append(DATASET_NAMES.get(attrs.get("dataset"), str(attrs.get("dataset"))))
    if arch:
        parts.append(ARCH_NAMES.get(attrs.get("arch"), str(attrs.get("arch"))))
    if split:
        parts.append(str(attrs.get("split")))
    if component:
        parts.append(COMPONENT_NAMES.get(attrs.get("component"), str(attrs.get("component"))))
    if size and attrs.get("n_per_class") is not None:
        parts.append(f"{attrs['n_per_class']}/class")
    return ", ".join(parts)


def component_title(attrs: Mapping) -> str:
    """'<component name> [<variant>]'."""
    name = COMPONENT_NAMES.get(attrs["component"], attrs["component"])
    return f"{name} [{variant(attrs)}]"


# ------------------------------------------------------------------------------ axes


def floor_density(
    density,
    floor: float = DEFAULT_FLOOR,
    reference: float | None = None,
    at_most: float | None = None,
) -> tuple[np.ndarray, float]:
    """(density clipped below at a level, the level) for a log scale: the level is
    floor·reference (reference = max(density)), or ``at_most`` if that is lower."""
    density = np.asarray(density, dtype=float)
    reference = float(np.max(density)) if reference is None else float(reference)
    if not reference > 0:
        raise HspecError("density: no positive value to put on a log scale")
    level = floor * reference
    if at_most is not None and 0 < at_most < level:
        level = float(at_most)
    return np.maximum(density, level), level


def mark_outliers(
    ax,
    values,
    *,
    height: float | None = None,
    bottom: float | None = None,
    color: str = OUTLIER_COLOR,
    label: str | None = None,
    size: float = 5,
    linewidth: float = 1.0,
):
    """Mark eigenvalues at their x positions and return the markers' Line2D.

    With ``height`` (and ``bottom``): stems from ``bottom`` to ``height`` in data units,
    a dot on top (deflated outliers). Without: small down-triangles along the top
    edge of the axes (separated outliers).
    """
    values = np.asarray(values, dtype=float)
    if height is None:
        (line,) = ax.plot(
            values,
            np.full(values.size, 0.97),
            linestyle="none",
            marker="v",
            markersize=size,
            color=color,
            label=label,
            transform=ax.get_xaxis_transform(),
            zorder=4,
        )
        return line
    if bottom is not None and values.size:
        ax.vlines(values, bottom, height, colors=color, linewidth=linewidth, zorder=3)
    (line,) = ax.plot(
        values,
        np.full(values.size, height),
        linestyle="none",
        marker="o",
        markersize=size,
        color=color,
        label=label,
        zorder=4,
    )
    return line


def draw_band(ax, band, level: float, *, color: str, label: str | None = None):
    """Shade a band (x, lower, upper) in ``color`` (alpha ``BAND_ALPHA``), clipped below
    at ``level`` for a log scale; returns the PolyCollection, or None without a band."""
    if band is None:
        return None
    x, lower, upper = band
    return ax.fill_between(
        x,
        np.maximum(lower, level),
        np.maximum(upper, level),
        color=color,
        alpha=BAND_ALPHA,
        linewidth=0,
        label=label,
        zorder=1,
    )


def band_label(arrays: Mapping) -> str:
    """'90 % band (n runs)'."""
    return f"{fn.BAND_LEVEL:.0%} band ({fn.n_runs(arrays)} runs)"


def plot_density(
    ax,
    arrays: Mapping,
    attrs: Mapping,
    *,
    floor: float = DEFAULT_FLOOR,
    color: str = BULK_COLOR,
    label: str | None = None,
    title: str | bool = True,
    stems: bool = True,
    mark_separated: bool = True,
    outlier_color: str | None = None,
    linewidth: float = 1.2,
    pad: float = 0.03,
    set_limits: bool = True,
    band: bool = True,
) -> dict:
    """The bulk density on a log y-scale over the denormalized axis, with the
    deflated outliers as stems and the separated outliers marked along the top.

    The floor is ``floor`` × the highest point drawn, lowered if need be to 1/100 of
    the bump one eigenvalue makes (:func:`hspec.figures.caption_numbers.atom_height`), so that
    the outliers of a spectrum with many parameters stay above it. Outliers are drawn
    in ``outlier_color``: the outlier colour for a curve in the bulk colour, else the
    curve's own, unconverged ones crossed. With ``band`` and n_vec ≥ 2 runs the 90 % band
    is shaded (:func:`draw_band`).

    Returns ``{"line", "band", "floor", "top", "outliers", "separated", "xlim"}`` (``band``:
    the PolyCollection, or None).
    """
    grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
    outliers = np.asarray(arrays["outliers"], dtype=float)
    height = fn.atom_height(attrs) if outliers.size else 0.0
    clipped, level = floor_density(
        density, floor, max(density.max(), height), at_most=0.01 * fn.atom_height(attrs)
    )
    (line,) = ax.plot(grid, clipped, color=color, linewidth=linewidth, label=label)
    shaded = draw_band(
        ax,
        fn.density_band(arrays, attrs) if band else None,
        level,
        color=color,
        label=None if label else band_label(arrays),
    )
    ax.set_yscale("log")
    outlier_color = outlier_color or (OUTLIER_COLOR if color == BULK_COLOR else color)
    if stems and outliers.size:
        mark_outliers(
            ax,
            outliers,
            height=height,
            bottom=level,
            color=outlier_color,
            label=None if label else f"deflated outliers ({outliers.size})",
        )
    flagged = fn.unconverged(arrays)
    if stems and flagged.size:
        ax.plot(
            flagged,
            np.full(flagged.size, height),
            linestyle="none",
            marker="x",
            markersize=8,
            color="black",
            label=None if label else f"unconverged ({flagged.size})",
            zorder=5,
        )
    found = fn.separated(arrays, attrs)
    if mark_separated and found.size:
        mark_outliers(
            ax,
            found,
            color=outlier_color,
            size=4,
            label=None if label else f"separated outliers ({found.size})",
        )
    lo = min(grid[0], outliers.min()) if outliers.size else grid[0]
    hi = max(grid[-1], outliers.max()) if outliers.size else grid[-1]
    margin = pad * (hi - lo)
    xlim = (lo - margin, hi + margin)
    top = max(density.max(), height)
    if set_limits:
        ax.set_xlim(*xlim)
        ax.set_ylim(level, top * 3)
    ax.set_xlabel("eigenvalue $\\lambda$")
    ax.set_ylabel("density")
    if title is True:
        ax.set_title(f"{describe(attrs)} [{variant(attrs)}]")
    elif title:
        ax.set_title(title)
    return {
        "line": line,
        "band": shaded,
        "floor": level,
        "top": top,
        "outliers": outliers,
        "separated": found,
        "xlim": xlim,
    }


def plot_log_density(
    ax,
    arrays: Mapping,
    attrs: Mapping,
    sign: int = 1,
    *,
    floor: float = DEFAULT_FLOOR,
    color: str | None = None,
    label: str | None = None,
    decades: float = 8.0,
    title: str | bool = True,
) -> dict:
    """The density of |λ| over one sign on log–log axes (Fig. 4b, 4d), with its 90 %
    band across runs where n_vec ≥ 2 (``band`` in the result); the x-range is where the
    density is above the floor (``xlim`` in the result)."""
    x, phi = fn.log_tail(arrays, attrs, sign, decades=decades)
    clipped, level = floor_density(phi, floor)
    color = color or SIGN_COLORS[sign]
    (line,) = ax.loglog(x, clipped, color=color, linewidth=1.2, label=label)
    shaded = draw_band(
        ax, fn.log_tail_band(arrays, attrs, sign, decades=decades), level, color=color
    )
    above = np.flatnonzero(phi > level)
    xlim = (x[max(above[0] - 1, 0)] / 1.5, x[min(above[-1] + 1, x.size - 1)] * 1.5)
    ax.set_xlim(*xlim)
    ax.set_ylim(level / 2, phi.max() * 3)
    ax.set_xlabel("$|\\lambda|$" + (" ($\\lambda > 0$)" if sign > 0 and not label else ""))
    ax.set_ylabel("density")
    if title is True:
        ax.set_title(describe(attrs))
    elif title:
        ax.set_title(title)
    return {
        "line": line,
        "band": shaded,
        "floor": level,
        "x": x,
        "phi": phi,
        "xlim": xlim,
        "top": float(phi.max()),
    }


def plot_fit(ax, fit: Mapping, *, color: str = "black", shade: bool = True):
    """The fitted power law as a dashed line over its range (and the range shaded)."""
    if "error" in fit:
        return None
    x = np.geomspace(fit["lo"], fit["hi"], 64)
    if shade:
        ax.axvspan(fit["lo"], fit["hi"], color="0.85", alpha=0.5, zorder=0)
    (line,) = ax.loglog(
        x,
        fit["a"] * x ** -fit["b"],
        linestyle="--",
        color=color,
        linewidth=1.5,
        label=f"$\\phi = {fit['a']:.2g}\\,|\\lambda|^{{-{fit['b']:.2f}}}$, $R^2 = {fit['r2']:.2f}$",
    )
    return line


def legend(ax, **kwargs):
    """``ax.legend(**kwargs)`` if the axes hold labelled artists (else nothing)."""
    handles, _ = ax.get_legend_handles_labels()
    return ax.legend(**kwargs) if handles else None


def zoom(ax, arrays: Mapping, lo: float, hi: float, floor: float = DEFAULT_FLOOR) -> None:
    """Limit the x-axis to [lo, hi] and the y-axis to the density drawn there."""
    grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
    inside = density[(grid >= lo) & (grid <= hi)]
    ax.set_xlim(lo, hi)
    if inside.size and inside.max() > 0:
        top = inside.max()
        ax.set_ylim(max(inside[inside > 0].min(), floor * top) / 2, top * 3)


def share_limits(axes, drawn, *, y: bool = False) -> tuple[float, float]:
    """Give every axis the x-range covering all ``drawn`` curves (results of
    :func:`plot_density` / :func:`plot_log_density`) and, with ``y``, the y-range from
    the lowest floor to 3 × the highest top. Returns the x-range."""
    drawn = list(drawn)
    xlim = (min(d["xlim"][0] for d in drawn), max(d["xlim"][1] for d in drawn))
    for ax in axes:
        ax.set_xlim(*xlim)
        if y:
            ax.set_ylim(min(d["floor"] for d in drawn), max(d["top"] for d in drawn) * 3)
    return xlim


def bulk_inset(
    ax, arrays: Mapping, attrs: Mapping, *, color: str = BULK_COLOR, bounds=(0.38, 0.5, 0.3, 0.36)
):
    """An inset (at ``bounds`` in axes fraction) zooming on the bulk: its edges
    (:func:`hspec.figures.caption_numbers.bulk_edges`) widened by 10 % on each side, log y,
    with the density's band where n_vec ≥ 2. Returns the inset axes, or None when the bulk has no edges."""
    try:
        lo, hi = fn.bulk_edges(arrays, attrs)
    except HspecError:
        return None
    grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
    inset = ax.inset_axes(list(bounds))
    clipped, level = floor_density(density, DEFAULT_FLOOR)
    inset.plot(grid, clipped, color=color, linewidth=1.0)
    draw_band(inset, fn.density_band(arrays, attrs), level, color=color)
    inset.set_yscale("log")
    zoom(inset, arrays, lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    inset.set_title("bulk", fontsize=7, pad=2)
    inset.tick_params(labelsize=6)
    return inset


def save_figure(fig, stem, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``, each atomically (complete or absent)."""
    stem = Path(stem)
    # the constrained layout is solved once, by one draw, then frozen: each savefig would
    # otherwise solve it again (most of a figure's time); no bbox_inches="tight" either,
    # which costs one more full draw per format
    fig.canvas.draw()
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")
    paths = []
    try:
        for fmt in ("png", "pdf"):
            path = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write(path, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, dpi=dpi))
            paths.append(path)
    finally:
        fig.set_layout_engine(engine)
    return paths


# --------------------------------------------------------------------------- figures


def hessian_figure(loaded: Mapping, title: str):
    """Figs. 1–2: one panel per spectrum (two columns), lettered, each with a bulk
    inset."""
    n = len(loaded)
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    fig = _new_figure(figsize=(6.5 * ncols, 4.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, letter, (arrays, attrs) in zip(axes.flat, string.ascii_lowercase, loaded.values()):
        plot_density(ax, arrays, attrs, title=f"({letter}) {describe(attrs)} [{variant(attrs)}]")
        bulk_inset(ax, arrays, attrs)
        legend(ax, loc="center right")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def deflation_figure(loaded: Mapping):
    """Fig. 3: per panel (a column), the deflated spectrum on top and the plain one
    below on a shared x-axis; dotted lines mark the deflated outliers in both."""
    n = len(loaded)
    fig = _new_figure(figsize=(8 * n, 7))
    axes = fig.subplots(2, n, sharex="col", squeeze=False)
    for column, pair in zip(axes.T, loaded.values()):
        top_arrays, top_attrs = pair["deflated"]
        drawn = [
            plot_density(
                column[0],
                *pair["deflated"],
                title=(f"LOWRANKDEFLATION then LANCZOSAPPROXSPEC: {describe(top_attrs)}"),
            ),
            plot_density(
                column[1],
                *pair["plain"],
                title=(f"LANCZOSAPPROXSPEC only: {describe(pair['plain'][1])}"),
            ),
        ]
        for ax, (arrays, attrs) in zip(column, (pair["deflated"], pair["plain"])):
            for value in top_arrays["outliers"]:
                ax.axvline(value, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
            bulk_inset(ax, arrays, attrs)
            legend(ax, loc="center right")
        column[0].set_xlabel("")
        share_limits(column, drawn)
    fig.suptitle("Benefits of low-rank deflation")
    return fig


def _components_block(subfig, loaded: Mapping, log_loaded: Mapping, numbers: Mapping) -> None:
    components = fn.ordered_components(loaded)
    rows = len(components)
    grid = subfig.add_gridspec(rows, 4)
    axes_a = [subfig.add_subplot(grid[i, 0]) for i in range(rows)]
    axes_b = [subfig.add_subplot(grid[i, 1]) for i in range(rows)]
    axes_c = [subfig.add_subplot(grid[i, 2]) for i in range(rows)]
    ax_d = subfig.add_subplot(grid[:, 3])
    # (a) the spectra on a shared x-axis
    share_limits(
        axes_a,
        [
            plot_density(ax, *loaded[c], title=component_title(loaded[c][1]))
            for ax, c in zip(axes_a, components)
        ],
    )
    for ax in axes_a:
        legend(ax, fontsize=6, loc="center right")
    # (b) log x-axis, positive eigenvalues, from the log variants
    share_limits(
        axes_b,
        [
            plot_log_density(
                ax,
                *log_loaded[c],
                sign=1,
                color=BULK_COLOR,
                title=component_title(log_loaded[c][1]),
            )
            for ax, c in zip(axes_b, components)
        ],
    )
    # (c) zoom on the bulk
    for ax, c in zip(axes_c, components):
        plot_density(ax, *loaded[c], title=component_title(loaded[c][1]), set_limits=False)
        zoom(ax, loaded[c][0], *numbers["zoom_range"])
    # (d) the tail on log-log axes, both signs, with the power law
    tail = numbers["asymmetry_component"]
    drawn = [
        plot_log_density(
            ax_d,
            *log_loaded[tail],
            sign=1,
            label="$\\lambda > 0$",
            title=component_title(log_loaded[tail][1]),
        )
    ]
    try:
        drawn.append(
            plot_log_density(
                ax_d, *log_loaded[tail], sign=-1, label="$|\\lambda|,\\ \\lambda < 0$", title=False
            )
        )
    except HspecError:  # a one-signed tail: no blue curve (its fit says why)
        pass
    share_limits([ax_d], drawn)
    ax_d.set_ylim(min(d["floor"] for d in drawn) / 2, max(d["top"] for d in drawn) * 3)
    plot_fit(ax_d, numbers["fit"])
    ax_d.text(
        0.03,
        0.03,
        f"asymmetry = {numbers['asymmetry']:.3f}\n(0: symmetric about 0, 1: one-signed)",
        transform=ax_d.transAxes,
        fontsize=8,
    )
    ax_d.set_xlabel("$|\\lambda|$")
    ax_d.legend(fontsize=8, loc="upper right")
    titles = [
        "(a) outlier attribution",
        "(b) log x-axis, $\\lambda > 0$",
        "(c) zoom on the bulk",
        "(d) tail: $\\lambda > 0$ red, $\\lambda < 0$ blue",
    ]
    for axes, title in zip([axes_a, axes_b, axes_c, [ax_d]], titles):
        axes[0].set_title(f"{title}\n{axes[0].get_title()}")
    subfig.suptitle(describe(log_loaded[tail][1], component=False))  # names the entry


def components_figure(loaded: Mapping, numbers: Mapping):
    """Fig. 4: per model (a row of panels) (a) the spectra stacked on a shared x-axis,
    (b) on a log x-axis, (c) zoomed on the bulk, (d) the tail component on log–log axes
    with its power law. ``loaded`` maps a model's label to ``{"spectra": ...,
    "log_spectra": ...}``; ``numbers`` is :func:`hspec.figures.caption_numbers.components_numbers`."""
    rows = [len(panel["spectra"]) for panel in loaded.values()]
    fig = _new_figure(figsize=(20, sum(2.9 * r + 1 for r in rows)))
    subfigs = fig.subfigures(len(rows), 1, squeeze=False, height_ratios=rows)[:, 0]
    for subfig, label in zip(subfigs, loaded):
        _components_block(
            subfig, loaded[label]["spectra"], loaded[label]["log_spectra"], numbers["panels"][label]
        )
    fig.suptitle("The Hessian $H$ and its components $G$ and $R$")
    return fig


def sample_size_figure(loaded: Mapping, numbers: Mapping):
    """Fig. 5: per dataset (a column) train (top) and test (bottom) curves of the
    covariance of gradients, coloured by examples per class (log colour scale, one
    colourbar); ``numbers`` is :func:`hspec.figures.caption_numbers.sample_size_numbers`."""
    sizes = {
        label: {
            split: {key: values["per_class_value"] for key, values in s.items()}
            for split, s in numbers["panels"][label]["spectra"].items()
        }
        for label in loaded
    }
    values = sorted({v for p in sizes.values() for s in p.values() for v in s.values()})
    norm = (
        mpl.colors.LogNorm(values[0], values[-1])
        if values[0] < values[-1]
        else mpl.colors.LogNorm(values[0] / 2, values[0] * 2)
    )
    cmap = mpl.colormaps[SIZE_CMAP]
    fig = _new_figure(figsize=(9 * len(loaded), 8))
    axes = fig.subplots(2, len(loaded), squeeze=False)
    for column, (label, splits) in zip(axes.T, loaded.items()):
        for ax, split in zip(column, [s for s in ("train", "test") if s in splits]):
            curves = splits[split]
            order = sorted(curves, key=lambda key: sizes[label][split][key])
            drawn = [
                plot_density(
                    ax,
                    *curves[key],
                    label=f"{key}/class",
                    title=False,
                    color=cmap(norm(sizes[label][split][key])),
                    set_limits=False,
                    linewidth=1.0,
                )
                for key in order
            ]
            share_limits([ax], drawn, y=True)
            first = curves[order[0]][1]
            ax.set_title(f"{describe(first, size=False)} [{variant(first)}]")
    colorbar = fig.colorbar(
        mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="examples per class (train)"
    )
    ticks = {}
    for panel in sizes.values():
        for split in panel.values():
            for key, value in split.items():
                ticks.setdefault(value, str(key))
    colorbar.set_ticks(list(ticks))
    colorbar.set_ticklabels(list(ticks.values()))
    colorbar.minorticks_off()
    fig.suptitle("Covariance of gradients across sample sizes: train (top), test (bottom)")
    return fig


def mark_parts(ax, attribution: Mapping) -> None:
    """Fig. 6: the eigenvalues of G0, G1, G2 and G1 + G2 (an attribution of
    :func:`hspec.pipeline.store.attribution_of`) as ticks, each part in its colour and band
    above the density (:data:`PART_MARKS`), and the outliers they are matched against as ▼."""
    for part, (name, color, (low, high)) in PART_MARKS.items():
        values = np.asarray(attribution["values"][part], dtype=float)
        ax.vlines(
            values,
            low,
            high,
            colors=color,
            linewidth=0.8,
            transform=ax.get_xaxis_transform(),
            label=f"{name} ({values.size})",
            zorder=4,
        )
    outliers = attribution["outliers"]
    mark_outliers(ax, outliers, color="black", size=4, label=f"top C of G ({len(outliers)})")


def class_structure_figure(loaded: Mapping, numbers: Mapping):
    """Fig. 6: per dataset (two columns) the spectrum of G at the largest size, train and
    test, with the eigenvalues of G0, G1, G2, G1 + G2 marked (:func:`mark_parts`); below,
    against examples per class, the outliers explained by G1 and G0 + G1 + G2 and the
    median relative error (train solid, test dashed); ``numbers`` is
    :func:`hspec.figures.caption_numbers.class_structure_numbers`."""
    fig = _new_figure(figsize=(11 * len(loaded), 8))
    axes = fig.subplots(2, 2 * len(loaded), squeeze=False)
    styles = {"train": "-", "test": "--"}
    for n, (label, splits) in enumerate(loaded.items()):
        panel = numbers["panels"][label]
        for ax, split in zip(axes[0, 2 * n : 2 * n + 2], ("train", "test")):
            if split not in splits:
                ax.set_axis_off()
                continue
            arrays, attrs = splits[split][panel["largest"][split]]
            drawn = plot_density(ax, arrays, attrs, title=False, mark_separated=False)
            ax.set_ylim(drawn["floor"], drawn["top"] * 1e4)  # room for the bands
            attribution = attribution_of(arrays, attrs)
            if attribution is not None:
                mark_parts(ax, attribution)
            ax.set_title(f"{describe(attrs)} [{variant(attrs)}]")
            legend(ax, loc="center right", fontsize="small")
        count, error = axes[1, 2 * n], axes[1, 2 * n + 1]
        for split, rows in panel["explained_by_size"].items():
            sizes = [row[1] for row in rows]
            for k, (name, color) in enumerate(MATCH_STYLES):
                counts = [np.nan if row[2 + k] is None else row[2 + k] for row in rows]
                count.plot(
                    sizes,
                    counts,
                    styles[split],
                    marker="o",
                    color=color,
                    label=f"{split}, by {name}",
                )
                medians = [
                    np.nan if row[2 + k] is None else row[2 + k]
                    for row in panel["relative_error_by_size"][split]
                ]
                error.plot(
                    sizes, medians, styles[split], marker="o", color=color, label=f"{split}, {name}"
                )
        C = max(v["num_classes"] or 0 for s in panel["spectra"].values() for v in s.values())
        for ax in (count, error):
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(row[0]) for row in rows])
            ax.minorticks_off()
        count.set_ylim(-0.5, (C or 10) + 0.5)
        count.set_xlabel("examples per class")
        count.set_ylabel("outliers explained (of C)")
        count.set_title(f"{DATASET_NAMES.get(label, label)}: outliers explained by the class means")
        legend(count, fontsize="small")
        drawn = [v for line in error.get_lines() for v in line.get_ydata()]
        if any(np.isfinite(v) and v > 0 for v in drawn):
            error.set_yscale("log")
        else:  # a spectrum stored without an attribution (or every match exact)
            error.text(0.5, 0.5, "no relative error > 0 stored", ha="center",
                       transform=error.transAxes)  # fmt: skip
        error.set_xlabel("examples per class")
        error.set_ylabel("median relative error")
        error.set_title("relative error of the matches")
        legend(error, fontsize="small")
    fig.suptitle("Where the outliers come from: the class/cross-class structure of $G$")
    return fig


def blocks_figure(loaded: Mapping, numbers: Mapping):
    """Fig. 7: per model (a row), the densities of the whole model (black) and of every
    block on one log-y axes, and the blocks' extreme eigenvalue estimates against the
    whole model's (dashed lines)."""
    n = len(loaded)
    fig = _new_figure(figsize=(11, 3.8 * n))
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=(2, 1))
    for row, (label, panel) in zip(axes, loaded.items()):
        spectra, _ = panel["blocks"]
        whole_arrays, whole_attrs = panel["whole"]
        colors = sns.color_palette("colorblind", len(spectra)).as_hex()
        plot_density(
            row[0],
            whole_arrays,
            whole_attrs,
            color="black",
            label="whole model",
            title=f"{describe(whole_attrs)}: blocks",
            stems=False,
            mark_separated=False,
        )
        for color, (name, (arrays, attrs)) in zip(colors, spectra.items()):
            plot_density(
                row[0],
                arrays,
                attrs,
                color=color,
                label=f"{name} ({attrs['n_params']})",
                title=False,
                stems=False,
                mark_separated=False,
                set_limits=False,
                linewidth=0.9,
            )
        legend(row[0], loc="upper right")
        numbers_row = numbers["panels"][label]
        names = list(numbers_row["blocks"])
        lows = [numbers_row["blocks"][b]["extremes"][0] for b in names]
        highs = [numbers_row["blocks"][b]["extremes"][1] for b in names]
        y = np.arange(len(names))
        row[1].barh(y, np.subtract(highs, lows), left=lows, color=colors)
        for value in numbers_row["whole"]["extremes"]:
            row[1].axvline(value, color="black", linestyle="--", linewidth=0.8)
        row[1].set_yticks(y, names)
        row[1].invert_yaxis()
        row[1].set_xlabel("eigenvalue $\\lambda$: block extremes")
        row[1].set_title("interlacing: blocks within the whole (dashed)")
    return fig
