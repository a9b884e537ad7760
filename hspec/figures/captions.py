"""The figures' captions, kept once: each notebook shows its caption (Markdown) and the
Snakemake report (``workflow/report/figure.rst``) quotes the same text (reStructuredText).

The text is written in the common subset of the two: paragraphs, ``*emphasis*``,
``**strong**``, double-backtick code, ``*`` bullets; a literal bar is written ``\\|``.
"""

from __future__ import annotations

from hspec.errors import HspecError
from hspec.figures.caption_numbers import AUTO_FIT_RULE

DRAWN = (
    "Densities are drawn on a log y-scale (clipped at 1e-8 × their maximum) over the "
    "denormalized eigenvalue axis. Deflated outliers are stems at their exact positions, "
    "as tall as the bump one eigenvalue would make with the bulk's kernel; outliers "
    "separated from the bulk are marked ▼ along the top of each panel."
)
BULK_INSET = "The inset of each panel zooms on the bulk (its edges widened by 10 %)."
COUNTED = (
    "*Outliers found* counts the eigenvalue estimates separated from the bulk: Ritz "
    "values or deflated outliers above the upper end of the bulk, i.e. of the connected "
    "part of {smoothed density > 0} (the smoothing kernel is cut below 1e-8, as in the "
    "paper's code) that carries the most mass, with the deflated outliers smoothed like "
    "the bulk (``hspec.figures.caption_numbers.separated``). Lanczos ghosts (repeated or "
    "weightless Ritz values) count once or not at all. *Bulk edges* are the 0.1 % and "
    "99.9 % quantiles of the bulk's quadrature without those outliers."
)
SCALE = (
    "**Scale.** The panel titles name the network and data set drawn. The demo "
    "(``config/demo.yaml``) computes these spectra for a small MLP on scikit-learn's "
    "8×8 digits (10 classes), not for the paper's networks and datasets. At that scale "
    "the numbers are what they are: the notebook prints what was measured (e.g. "
    "*outliers found: k (classes: C)*) and writes it to ``numbers.json``; nothing "
    "asserts that the paper's structure appears unless those numbers show it."
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
        [PANELS, DRAWN, BULK_INSET],
    ),
    "fig2": (
        "Figure 2: spectrum of the test Hessian",
        "Paper, Fig. 2: the test Hessian of VGG11 on the same datasets. As for the train "
        "Hessian a bulk and outliers, their number arguably C, though some are less "
        "clearly separated; the test Hessian is of a visibly different magnitude than "
        "the train one.",
        [PANELS, DRAWN, BULK_INSET],
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
            "fitted by least squares on the log–log axes to the positive side over the "
            "shaded range, its R², and the asymmetry of R (the Wasserstein-1 distance "
            "between R's spectrum and its reflection about 0 over 2·E\\|λ\\|; 0 = "
            "symmetric, 1 = one-signed).",
            "**Fit range.** The notebook's ``fit_range = [lo, hi]`` (in \\|λ\\|) fixes it. "
            "With ``fit_range = None``, the "
            + AUTO_FIT_RULE.format(span=1.0).replace("|λ|", "\\|λ\\|")
            + ". The negative side is fitted the same way and "
            "reported in the numbers.",
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
            "The notebook prints the number of separated outliers per sample size and "
            "whether it is non-decreasing in the sample size.",
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
    return "\n\n".join([paper, *drawn, COUNTED, SCALE])


def _entry(fig: str):
    if fig not in _TEXT:
        raise HspecError(f"captions: unknown figure {fig!r} (known: {', '.join(_TEXT)})")
    return _TEXT[fig]
