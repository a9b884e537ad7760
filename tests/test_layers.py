"""The package's layers: a lower layer never imports a higher one.

hspec falls into four layers, lowest first (CONTRIBUTING.md has the map):

0. ``hspec.errors``, ``hspec.atomic``, ``hspec.settings``, ``hspec.version``: the error
   type, atomic file writes, the version, and every setting's default (the schema ``hspec/config.schema.yaml``);
1. ``hspec.numerics``: model-agnostic numerics on any symmetric operator (inner
   products, the operator base, Lanczos, NORMALIZATION, densities, KPM, deflation,
   Krylov outliers, ``spectral_density`` and its checkpoint);
2. ``hspec.curvature``: curvature of a network's loss (loss derivatives, the H/G/R
   operators, exact references, distributed products);
3. ``hspec.pipeline``: the paper's pipeline (data, models, training, store, settings,
   config checks, locks, command line);
4. ``hspec.figures``: caption numbers and drawing.

Every import statement of every module is read with :mod:`ast` (imports inside
functions included), so a late import cannot hide a violation.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hspec"
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "settings": 0,
    "version": 0,
    "numerics": 1,
    "curvature": 2,
    "pipeline": 3,
    "figures": 4,
}


def layer(module: str) -> int | None:
    """The layer of a dotted ``hspec.…`` module name (None for the package facade)."""
    parts = module.split(".")
    if parts[0] != "hspec" or len(parts) == 1:
        return None
    return LAYERS.get(parts[1])


def package_of(path: Path) -> str:
    """The dotted package a module file of hspec belongs to."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])


def imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every hspec import in ``source``, a module of ``package``;
    relative imports resolved, ``from hspec import x`` read as module ``hspec.x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            found += [
                (node.lineno, f"{base}.{alias.name}" if base == "hspec" else base)
                for alias in node.names
            ]
    return [(line, name) for line, name in found if name.split(".")[0] == "hspec"]


MODULES = sorted(
    path for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE or path.stem in LAYERS
)


def test_every_module_has_a_layer():
    top_level = {path.stem for path in PACKAGE.glob("*.py")} | {
        path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"
    }
    assert top_level - {"__init__", "__main__"} <= set(LAYERS), top_level - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = layer("hspec." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = [
        (line, name)
        for line, name in imports(path.read_text(), package_of(path))
        if layer(name) is None or layer(name) > own
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} imports from above its layer {own}: {upward}"


def test_the_checker_sees_upward_imports():
    """The check itself can fail: late, relative and facade imports are all seen."""
    source = (
        "import numpy\nfrom . import lanczos\n\ndef f():\n"
        "    from hspec.pipeline import store\n    import hspec\n"
        "    from hspec import curvature_operator\n"
    )
    found = imports(source, "hspec.numerics")
    assert found == [
        (2, "hspec.numerics"),
        (5, "hspec.pipeline"),
        (6, "hspec"),
        (7, "hspec.curvature_operator"),
    ]
    assert layer("hspec.pipeline") > layer("hspec.numerics.lanczos")
    assert layer("hspec") is None  # the facade: importing it from inside is refused
