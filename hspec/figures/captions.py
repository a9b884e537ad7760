"""The figures' captions, kept once: each notebook shows its caption (Markdown) and the
Snakemake report (``workflow/report/figure.rst``) quotes the same text (reStructuredText).

The text is written in the common subset of the two: paragraphs, ``*emphasis*``,
``**strong**``, double-backtick code, ``*`` bullets; a literal bar is written ``\\|``.
"""

from __future__ import annotations

from collections.abc import Mapping

from hspec.errors import HspecError
from hspec.figures.caption_numbers import (
    AUTO_FIT_RULE,
    BAND_LEVEL,
    BAND_SUPPORT,
    claim_lines,
    spectra_of,
)

DRAWN = (
    "Densities are drawn on a log y-scale (clipped at 1e-8 × their maximum) over the "
    "denormalized eigenvalue axis. Deflated outliers are stems at their exact positions, "
    "as tall as the bump one eigenvalue would make with the bulk's kernel; outliers "
    "separated from the bulk are marked ▼ along the top of each panel."
)
BULK_INSET = "The inset of each panel zooms on the bulk (its edges widened by 10 %)."
COUNTED = (
    "**Counting outliers.** The primary count, *outliers explained by the class means* "
    "(``outliers_explained`` in ``numbers.json``), takes the top C eigenvalues of the "
    "deflated operator (the spectrum's deflated outliers, or the C largest distinct Ritz "
    "values of its Lanczos runs) and counts those matched by the eigenvalues of G1 = "
    "Σ_c w_c (C−1) δ_c δ_cᵀ, the class means of the gradients (Papyan 2019, 2020): the "
    "k-th largest against the k-th, within a relative error of 10 %; every relative "
    "error is listed, and the same for G0 + G1 + G2, all the class means "
    "(``outliers_explained_g0_g1_g2``; ``hspec.curvature.attribution``). The secondary "
    "count, *gap-heuristic outliers* (``gap_heuristic_outliers``), is a density-gap "
    "heuristic: the eigenvalue estimates separated from the bulk: Ritz "
    "values or deflated outliers above the upper end of the bulk, i.e. of the connected "
    "part of {smoothed density > 0} (the smoothing kernel is cut below 1e-8, as in the "
    "paper's code) that carries the most mass, with the deflated outliers smoothed like "
    "the bulk (``hspec.figures.caption_numbers.separated``). Lanczos ghosts (repeated or "
    "weightless Ritz values) count once or not at all. *Bulk edges* are the 0.1 % and "
    "99.9 % quantiles of the bulk's quadrature without those outliers."
)
ERRORS = (
    "**Errors.** A spectrum computed with n_vec ≥ 2 Lanczos start vectors "
    f"(``spectrum.n_vec``) is drawn with its pointwise {BAND_LEVEL:.0%} band across the runs, "
    "shaded in its curve's colour: mean ± t·s/√n_vec of the runs' densities, each run "
    "smoothed alone (``SpectralDensity.band``). The band measures how much the random "
    "start vectors move the estimate; it does not measure the bias of the smoothing or "
    "of too few Lanczos steps. Curves whose bands overlap are not shown to differ. "
    "Each derived number (bulk edges, asymmetry, gap-heuristic outliers, the power-law "
    "exponent) is measured on every run alone as well, and ``numbers.json`` gives its "
    "standard error across runs and its t and bootstrap intervals. With one "
    "run there is no band and no error: the numbers are single estimates. Each "
    "deflated outlier θ comes with its true residual r = ‖Ax − θx‖, measured by one "
    "product: the interval [θ − r, θ + r] holds an eigenvalue. An outlier whose error "
    "bound exceeds the deflation tolerance is *unconverged*: it is crossed ✕ on its "
    "stem and listed in the numbers. ``numbers.json`` also records where every number "
    "comes from: hspec's commit, the software versions, device, host, times, the model "
    "file's sha256 and its training settings."
)
SCALE = (
    "**Scale.** The panel titles name the network and data set drawn. The demo "
    "(``config/demo.yaml``) computes these spectra for a small MLP on scikit-learn's "
    "8×8 digits (10 classes), not for the paper's networks and datasets. At that scale "
    "the numbers are what they are: the notebook prints what was measured (e.g. "
    "*outliers explained by the class means (G1, within 10%): k of C*) and writes it "
    "to ``numbers.json``; nothing "
    "asserts that the paper's structure appears unless those numbers show it."
)
BULK_LAW = (
    "**Bulk law.** The notebook fits to each Hessian's bulk (its quadrature without the "
    "separated outliers) the best Marchenko–Pastur law and the best heavy-tailed "
    "(Fréchet) law by Wasserstein-1 distance, and reports which is closer, both "
    "distances and the Kolmogorov–Smirnov distances (``bulk_law``, "
    "``hspec.numerics.claims.bulk_law``): the paper's \"the bulk is not "
    'Marchenko–Pastur" as a measurement.'
)
RATIO = (
    "**Test vs train.** The ratios test/train of the top eigenvalue, of the mean "
    "eigenvalue (trace/dim) and of the root mean square eigenvalue of the same model's "
    "Hessians, with errors across the Lanczos runs (``magnitude_ratio``, "
    "``hspec.numerics.claims.magnitude_ratio``): the paper's \"visibly different "
    'magnitude" as a number.'
)
PANELS = (
    "One panel per data set and examples-per-class size of the figure's "
    "``figures:`` entry in the config."
)

_TEXT = {
    "fig1": (
        "Figure 1: spectrum of the train Hessian",
        "Paper, Fig. 1: the train Hessian of VGG11 on MNIST, FashionMNIST, CIFAR10 and "
        "CIFAR100. It shows a large concentration of eigenvalues at zero, a bulk, and "
        "outliers whose number arguably equals the number of classes C and which are "
        "clearly separated from the bulk (less clearly for CIFAR100); negative "
        "eigenvalues exist.",
        [PANELS, DRAWN, BULK_INSET, BULK_LAW],
    ),
    "fig2": (
        "Figure 2: spectrum of the test Hessian",
        "Paper, Fig. 2: the test Hessian of VGG11 on the same datasets. As for the train "
        "Hessian a bulk and outliers, their number arguably C, though some are less "
        "clearly separated; the test Hessian is of a visibly different magnitude than "
        "the train one.",
        [PANELS, DRAWN, BULK_INSET, BULK_LAW, RATIO],
    ),
    "fig3": (
        "Figure 3: benefits of low-rank deflation",
        "Paper, Fig. 3: the train Hessian of ResNet18 on MNIST with 136 examples per "
        "class. Top: LOWRANKDEFLATION(C) followed by LANCZOSAPPROXSPEC; bottom: "
        "LANCZOSAPPROXSPEC alone. The top eigenvalues found by deflation align with the "
        "outliers of the bottom panel, and deflation resolves the bulk better.",
        [
            "One column per data set and examples-per-class size of the config's entry; "
            "the two panels of a column share the x-axis, and dotted lines mark the "
            "deflated outliers in both. Each separated outlier of the deflated spectrum is "
            "paired with the nearest separated Ritz value of the plain one, and their "
            "relative difference printed.",
            DRAWN,
            BULK_INSET,
        ],
    ),
    "fig4": (
        "Figure 4: the test Hessian and its two components",
        "Paper, Fig. 4: the test Hessian H of VGG11 on MNIST with 2599 examples per "
        "class, its covariance of gradients G and its averaged Hessian of predictions R "
        "(H = G + R); H and G deflated. The paper finds H's outliers at the same places "
        "in G and none in R, reports a power law φ = 4.3·10⁻⁴·\\|λ\\|^(−2.6), "
        "R² = 0.98, for R's tail, and a nearly symmetric R.",
        [
            "One block of panels per data set and examples-per-class size of the config's entry:",
            "* **(a)** the three spectra stacked, on a shared x-axis;\n"
            "* **(b)** the same on a log x-axis, positive eigenvalues only, from the "
            "``log`` variants (many Lanczos steps, no deflation; outliers, if any, as atoms "
            "of mass 1/n_params);\n"
            "* **(c)** a zoom on the bulk: the x-range is R's bulk edges (H's if R is "
            "absent), widened by 10 % on each side;\n"
            "* **(d)** R's tail: the density of \\|λ\\| on log–log axes, positive "
            "eigenvalues red, \\|negative\\| blue, with the power law φ = a·\\|λ\\|^(−b) "
            "fitted to the positive side over the shaded range by maximum likelihood (a "
            "truncated power law on the spectral measure, ``hspec.numerics.claims."
            "tail_exponent``), with its R² against the drawn density, and the asymmetry "
            "of R (the Wasserstein-1 distance between R's spectrum and its reflection "
            "about 0 over 2·E\\|λ\\|; 0 = symmetric, 1 = one-signed).",
            "**Fit range.** The notebook's ``fit_range = [lo, hi]`` (in \\|λ\\|) fixes it. "
            "With ``fit_range = None``, the "
            + AUTO_FIT_RULE.format(span=1.0).replace("|λ|", "\\|λ\\|")
            + ". The negative side is fitted the same way and "
            "reported in the numbers. The exponent's interval (``fit``: ``interval``) is "
            "the fit's own; with n_vec ≥ 2, ``fit_errors`` gives besides its jackknife "
            "error across the runs, refitted on the same range (the range rule's own "
            "variation is not in that one).",
            "**Claims.** ``numbers.json`` gives R's symmetry with its standard error "
            "across runs and a bootstrap interval (``symmetry``, "
            "``hspec.numerics.claims.symmetry``) and the bulk law of H and G "
            "(``bulk_law``, as in Fig. 1).",
            DRAWN,
        ],
    ),
    "fig5": (
        "Figure 5: the covariance of gradients across sample sizes",
        "Paper, Fig. 5: the covariance of gradients G of VGG11 on CIFAR10 for several "
        "numbers of training examples per class, train (top) and test (bottom). In "
        "both, more outliers emerge from the bulk as the sample size grows.",
        [
            "One column per data set of the config's entry; one curve per examples-per-"
            "class size, coloured by it on a sequential colormap (log scale, colourbar). "
            "The notebook prints, per sample size, the outliers explained by the class "
            "means (primary) and the gap-heuristic outliers (secondary), and whether "
            "each is non-decreasing in the sample size.",
            DRAWN,
        ],
    ),
    "fig6": (
        "Figure 6: where the outliers come from: the class/cross-class structure of G",
        "Papyan, ICML 2019 and JMLR 2020: the covariance of gradients splits exactly as "
        "G = G0 + G1 + G2 + G_within by the class means of the gradients δ_{c,c'}; the C "
        "outliers of G are the C eigenvalues of G1 = Σ_c w_c (C−1) δ_c δ_cᵀ, the C(C−1) "
        "eigenvalues of G2 (the cross-class means) form a mini-bulk below them, and "
        "G_within is the bulk. As the sample size grows, more outliers are explained.",
        [
            "Top row, per data set: the spectrum of G (train left, test right) at the "
            "largest examples-per-class size of the config's entry, with the eigenvalues "
            "of G0, G1, G2 and G1 + G2 (``hspec.curvature.attribution``, exact by their "
            "C×C and C²×C² Gram matrices) drawn as ticks of four colours in bands above "
            "the density, and the C outliers they are matched against as ▼. Bottom row: "
            "against the examples per class, the number of the C outliers explained by "
            "G1 and by G0 + G1 + G2 (left) and the median relative error of the matches "
            "(right, log scale), train solid and test dashed. The shares of tr G in G0, "
            "G1, G2 and G_within (tr G_within by a Hutchinson estimate, its standard "
            "error in ``numbers.json``) are printed.",
            DRAWN,
        ],
    ),
    "fig7": (
        "Figure 7: spectra of the parameter blocks",
        "Not in the paper: the spectrum of each diagonal block A_BB of the curvature matrix "
        "A (the config's ``blocks``: per layer by default, or named blocks of parameters; "
        "every other parameter held fixed), drawn over the whole model's spectrum. The "
        "block spectra are not pieces of the whole one: by Cauchy interlacing each lies "
        "within the whole one's extremes, and their traces add up to the whole trace.",
        [
            "One row per data set and examples-per-class size of the config's ``fig7`` "
            "entry. Left: the whole model's density (black) and every block's, each "
            "normalized to mass 1 over its own parameters. Right: each block's largest and "
            "smallest eigenvalue estimates against the whole model's (dashed). The notebook "
            "prints whether the blocks partition the parameters, the interlacing check "
            "(extreme Ritz values, a slack of 1 % of the whole width) and the sum of the "
            "blocks' trace estimates against the whole one's.",
            DRAWN,
        ],
    ),
}


def title(fig: str) -> str:
    """The figure's title, e.g. 'Figure 1: spectrum of the train Hessian'."""
    return _entry(fig)[0]


def caption(fig: str) -> str:
    """The figure's caption: what the paper shows, what is drawn, how outliers are
    counted, and the scale note; paragraphs separated by blank lines."""
    _, paper, drawn = _entry(fig)
    return "\n\n".join([paper, *drawn, COUNTED, ERRORS, SCALE])


def _entry(fig: str):
    if fig not in _TEXT:
        raise HspecError(f"captions: unknown figure {fig!r} (known: {', '.join(_TEXT)})")
    return _TEXT[fig]


def measured(numbers: Mapping) -> str:
    """What a figure's bands and errors show, in words (Markdown, for its notebook), from
    its numbers (:mod:`hspec.figures.caption_numbers`): how wide each spectrum's band is
    (or that one run gives none), which deflated outliers are unconverged, the paper's
    claims as measured (:func:`hspec.figures.caption_numbers.claim_lines`) and where the
    spectra were computed."""
    spectra = spectra_of(numbers)
    banded = [(label, values["band"]) for label, values in spectra if values["band"]]
    if banded:
        widths = "; ".join(
            f"{label}: {band['runs']} runs, {band['median_relative_width']:.1%} of the "
            f"density on median where it is above {BAND_SUPPORT:g} × its peak (at most "
            f"{band['max_relative_width']:.0%})"
            for label, band in banded
        )
        band = (
            f"**Band.** The shaded {BAND_LEVEL:.0%} band is as wide as: {widths}. A "
            "difference between curves smaller than its band is within the noise of the "
            "random start vectors."
        )
    else:
        band = (
            "**Band.** Every spectrum here comes from one Lanczos run (n_vec = 1): no band "
            "is drawn and the numbers carry no error; set ``spectrum.n_vec`` ≥ 2 for them."
        )
    if len(banded) < len(spectra) and banded:
        band += (
            " Spectra with one run carry no band: "
            + ", ".join(label for label, values in spectra if not values["band"])
            + "."
        )
    flagged = [
        f"{label}: {', '.join(f'{v:.4g}' for v in values['unconverged_outliers'])}"
        for label, values in spectra
        if values["unconverged_outliers"]
    ]
    certified = sum(len(values["outlier_certificates"]) for _, values in spectra)
    if flagged:
        outliers = (
            "**Unconverged outliers** (crossed in the figure; their residual exceeds the "
            "tolerance, so their value is known only to within it): " + "; ".join(flagged) + "."
        )
    elif certified:
        outliers = (
            f"**Outliers.** All {certified} deflated outliers converged; each lies within its "
            "measured residual of an eigenvalue (``numbers.json``: ``outlier_certificates``)."
        )
    else:
        outliers = "**Outliers.** No spectrum here was deflated: no outlier is certified."
    origins = sorted(
        {
            f"hspec {o.get('hspec_version')} at commit {str(o.get('git_commit'))[:12]}"
            + (" (dirty)" if o.get("git_dirty") else "")
            + f" on {o.get('device')}"
            if o
            else "an hspec that recorded no provenance"
            for o in (values["provenance"] for _, values in spectra)
        }
    )
    origin = "**Origin.** Computed by " + "; ".join(origins) + " (details in ``numbers.json``)."
    claimed = claim_lines(numbers)
    claims = (
        ["**The paper's claims, measured** (``numbers.json``; each with its method):"]
        + ["* " + line.strip() for line in claimed]
        if claimed
        else []
    )
    return "\n\n".join(
        [band, outliers, "\n".join(claims), origin] if claims else [band, outliers, origin]
    )
