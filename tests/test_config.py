"""The workflow configuration: schema validation and value checks, fuzzed."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from hspec.errors import HspecError
from hspec.pipeline.config import check
from hspec.settings import SCHEMA_FILE

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(SCHEMA_FILE)


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def validated(config):
    """What the Snakefile does before anything runs (validate fills the defaults)."""
    validate(config, SCHEMA, set_default=True)
    check(config)


@pytest.mark.parametrize("name", ["config.yaml", "config/demo.yaml", "config/transformer.yaml"])
def test_shipped_configs_are_valid(name):
    validated(load(name))


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (lambda c: c.update(epochs=3), "epochs"),  # unknown key
        (lambda c: c["spectrum"].update(steps="many"), "many"),  # wrong type
        (lambda c: c["spectrum"].update(k=1.0), "1.0"),  # k must exceed 1
        (lambda c: c["figures"]["fig1"].update(arch="AlexNet"), "AlexNet"),
        (lambda c: c.update(device="tpu"), "tpu"),
        (lambda c: c.update(models={"own": "no path"}), "no path"),
        (lambda c: c["datasets"].update(tokens={"factory": "m:f", "lrs": [0.1]}), "epochs"),
    ],
)
def test_schema_errors_name_the_value(edit, culprit):
    config = load("config/demo.yaml")
    edit(config)
    with pytest.raises(WorkflowError, match=culprit):
        validated(config)


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (
            lambda c: c["datasets"]["digits"].update(epochs=30.0),
            r"datasets\.digits\.epochs must be an integer, not 30\.0",
        ),
        (
            lambda c: c["spectrum"].update(steps=128.0),
            r"spectrum\.steps must be an integer, not 128\.0",
        ),
        (
            lambda c: c["figures"]["fig3"].update(per_class=[20.0]),
            r"figures\.fig3\.per_class\[0\] must be an integer",
        ),
        (
            lambda c: c["datasets"]["digits"].update(lrs=[float("inf")]),
            r"datasets\.digits\.lrs\[0\] must be finite, not inf",
        ),
        (
            lambda c: c["datasets"]["digits"].update(lrs=[float("nan")]),
            r"datasets\.digits\.lrs\[0\] must be finite",
        ),
        (
            lambda c: c["training"].update(momentum=float("nan")),
            r"training\.momentum must be finite",
        ),
        (lambda c: c.update(seed=2**70), "1180591620717411303424"),
        (lambda c: c.update(seed=2**32), "4294967296"),
        (lambda c: c.update(seed=-1), "-1"),
    ],
)
def test_what_the_cli_rejects_the_config_rejects(edit, culprit):
    """Item 9: integers written as floats, infinite or NaN rates, seeds outside
    [0, 2**32) used to pass validation and fail late, in a job."""
    config = load("config/demo.yaml")
    edit(config)
    with pytest.raises((WorkflowError, HspecError), match=culprit):
        validated(config)


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (
            lambda c: c["figures"]["fig1"].update(arch="alexnet"),
            r"figures\.fig1\.arch 'alexnet' is neither one of vgg11, .* nor a name under models",
        ),
        (
            lambda c: c["figures"]["fig1"].update(datasets=["tokens"]),
            r"figures\.fig1 uses dataset 'tokens', which has no entry under datasets",
        ),
        (
            lambda c: (
                c["datasets"].update(tokens={"factory": "m:f", "lrs": [0.1], "epochs": 2}),
                c["figures"]["fig3"].update(datasets=["tokens"]),
            ),
            r"figures\.fig3\.per_class must be \[full\] for your own dataset 'tokens'",
        ),
    ],
)
def test_own_models_and_datasets_are_named_where_they_are_used(edit, culprit):
    config = load("config/demo.yaml")
    edit(config)
    with pytest.raises(HspecError, match=culprit):
        validated(config)


def test_the_largest_seed_passes():
    config = load("config/demo.yaml")
    config["seed"] = 2**32 - 1
    validated(config)


def test_too_many_per_class_names_the_figure_and_the_limit():
    config = load("config/demo.yaml")
    config["figures"]["fig5"]["per_class"] = [10, 500]
    with pytest.raises(HspecError, match=r"figures\.fig5\.per_class \[500\] exceeds"):
        validated(config)


def test_a_dataset_without_learning_rates_is_named():
    config = load("config/demo.yaml")
    config["figures"]["fig3"]["datasets"] = ["mnist"]
    with pytest.raises(HspecError, match="figures.fig3 uses dataset 'mnist'"):
        validated(config)


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 10**5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from paths(value, prefix + (index,))


DEMO = load("config/demo.yaml")
ALL_PATHS = [p for p in paths(DEMO) if p]


@st.composite
def broken_configs(draw):
    config = copy.deepcopy(DEMO)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = config
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(JUNK)
            elif action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=6))] = draw(JUNK)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path
    return config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_configs())
def test_fuzzed_configs_fail_with_one_clear_message(config):
    try:
        validated(config)
    except (WorkflowError, HspecError) as error:
        message = str(error)
        assert message and "Traceback" not in message


# --- the entry points: wrong arguments get an HspecError, never a deep traceback ---------

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hspec import curvature_operator, spectral_density  # noqa: E402

MATRIX = torch.tensor(np.diag(np.linspace(-1, 3, 24)))
ARGUMENT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(-2, 5),
    st.floats(allow_nan=True),
    st.text(max_size=5),
)


@settings(max_examples=120, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "method",
                "deflate",
                "steps",
                "bound_steps",
                "margin",
                "points",
                "n_vec",
                "iterations",
                "k",
                "deflation",
            ]
        ),
        ARGUMENT,
        max_size=3,
    )
)
def test_fuzzed_spectral_density_arguments(kwargs):
    try:
        spectral_density(lambda v: MATRIX @ v, 24, dtype=torch.float64, **kwargs)
    except HspecError as error:
        assert str(error).split(":")[0] in kwargs or "dim" in str(error)


@settings(max_examples=60, deadline=None)
@given(
    component=ARGUMENT | st.sampled_from(["hessian", "fisher"]),
    batch_size=ARGUMENT,
    dtype=st.sampled_from([None, torch.float64, torch.int32, "x"]),
)
def test_fuzzed_curvature_operator_arguments(component, batch_size, dtype):
    model = torch.nn.Linear(4, 3)
    data = (torch.randn(5, 4), torch.randint(0, 3, (5,)))
    try:
        curvature_operator(model, data, component, batch_size=batch_size, dtype=dtype)
    except HspecError as error:
        assert str(error).split(":")[0] in ("component", "batch_size", "dtype")
