"""hspec's settings, defined once: the JSON schema ``hspec/config.schema.yaml``.

The schema (shipped inside the package) gives every setting its type, range, description
and default, the paper's. The Snakefile validates the workflow configuration against it,
filling the defaults; the library and the ``hspec`` command line take their defaults from
:func:`defaults` (``TRAINING``, ``SPECTRUM``, ``LR_GRID``, ``EPOCHS``), so no default is
written twice.

``hspec spectrum --settings FILE`` reads the ``spectrum`` settings (their ``seed`` is
the start vectors', not the top-level training seed) and ``device`` as one JSON object,
the way the workflow passes them: :class:`SettingsFile`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import math
import sys
from importlib import resources
from pathlib import Path

import yaml

from hspec.errors import HspecError

SCHEMA_FILE = Path(str(resources.files("hspec") / "config.schema.yaml"))
# the `spectrum` keys that are not `hspec spectrum` options (the workflow's own)
WORKFLOW_ONLY = ("log_steps", "threads", "mem_mb", "runtime")


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def schema() -> dict:
    """A copy of the settings schema."""
    return copy.deepcopy(_schema())


def resolve(node: dict) -> dict:
    """``node`` with a local ``$ref`` ("#/$defs/NAME") merged under its own keys."""
    if "$ref" not in node:
        return node
    target = _schema()
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**resolve(target), **{k: v for k, v in node.items() if k != "$ref"}}


def _fill(node: dict, value):
    """Fill the defaults of an object's missing properties, recursively, in place; the
    same as ``snakemake.utils.validate(..., set_default=True)``."""
    node = resolve(node)
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            sub = resolve(sub)
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _fill(sub, value[key])
    return value


def complete(config: dict) -> dict:
    """A copy of ``config`` with every missing default filled in (no validation)."""
    return _fill(_schema(), copy.deepcopy(config))


@functools.cache
def _defaults() -> dict:
    return complete({})


def defaults() -> dict:
    """The paper's settings: every key of the schema at its default."""
    return copy.deepcopy(_defaults())


TRAINING: dict = defaults()["training"]
SPECTRUM: dict = defaults()["spectrum"]
LR_GRID: dict[str, tuple[float, ...]] = {
    name: tuple(entry["lrs"]) for name, entry in defaults()["datasets"].items()
}
EPOCHS: dict[str, int] = {name: entry["epochs"] for name, entry in defaults()["datasets"].items()}
# what `hspec spectrum --settings FILE` reads: its options among the settings
SPECTRUM_OPTIONS = tuple(key for key in SPECTRUM if key not in WORKFLOW_ONLY) + ("device",)


def type_errors(config, node: dict | None = None, path: str = "config") -> list[str]:
    """What JSON schema lets through but hspec refuses: a float where the schema says
    integer (draft 2020-12 accepts 30.0), or a number that is not finite."""
    node = resolve(_schema() if node is None else node)
    kinds = node.get("type")
    if kinds == "integer" and isinstance(config, float):
        return [f"{path} must be an integer, not {config!r}"]
    if isinstance(config, float) and not math.isfinite(config):
        return [f"{path} must be finite, not {config!r}"]
    errors = []
    for branch in node.get("oneOf", ()):
        if resolve(branch).get("type") in ("integer", "number"):
            errors += type_errors(config, branch, path)
    if isinstance(config, dict):
        extra = node.get("additionalProperties")
        for key, value in config.items():
            sub = node.get("properties", {}).get(key, extra)
            if isinstance(sub, dict):
                errors += type_errors(value, sub, f"{path}.{key}")
    elif isinstance(config, list) and isinstance(node.get("items"), dict):
        for index, value in enumerate(config):
            errors += type_errors(value, node["items"], f"{path}[{index}]")
    return errors


def _options_schema() -> dict:
    """The schema of a --settings file: the spectrum options and device."""
    spectrum = _schema()["properties"]["spectrum"]["properties"]
    properties = {key: spectrum[key] for key in SPECTRUM_OPTIONS if key in spectrum}
    device = dict(_schema()["properties"]["device"], pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    properties.update(device=device)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "$defs": _schema()["$defs"],
    }


def _jsonschema():
    """jsonschema, imported without rfc3987_syntax: jsonschema imports it, when installed,
    for the "iri" format, and it builds ~40 lark grammars at import (2 s of every ``hspec``
    command's start); the schema uses no format. Later imports of rfc3987_syntax work."""
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return importlib.import_module("jsonschema")
    sys.modules["rfc3987_syntax"] = None  # an import of it now raises ImportError
    try:
        return importlib.import_module("jsonschema")
    finally:
        del sys.modules["rfc3987_syntax"]


def read_spectrum_settings(path: str | Path) -> dict:
    """The JSON object of a --settings file, checked against the schema. Raises an
    HspecError naming the file and the key."""
    jsonschema = _jsonschema()

    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise HspecError(f"--settings {str(path)!r}: {error}") from error
    try:
        jsonschema.Draft202012Validator(_options_schema()).validate(values)
    except jsonschema.ValidationError as error:
        where = ".".join(map(str, error.absolute_path)) or "the file"
        raise HspecError(f"--settings {str(path)!r}: {where}: {error.message}") from error
    errors = type_errors(values, _options_schema(), "settings")
    if errors:
        raise HspecError(f"--settings {str(path)!r}: {errors[0].removeprefix('settings.')}")
    return values


class Explicit(argparse.Action):
    """A store action that records its option as given on the command line, so a later
    ``--settings FILE`` leaves it alone (explicit flags override the file)."""

    def __init__(self, option_strings, dest, nargs=None, **kwargs):
        self.flag = nargs == 0
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        explicit = getattr(namespace, "explicit_settings", set())
        namespace.explicit_settings = explicit | {self.dest}
        value = self.const if self.flag else values
        if self.flag and option_string.startswith("--no-"):
            value = False
        setattr(namespace, self.dest, value)


def switch(**kwargs) -> dict:
    """add_argument keywords of a boolean setting given as --NAME / --no-NAME."""
    return dict(action=Explicit, nargs=0, const=True, **kwargs)


class SettingsFile(argparse.Action):
    """``--settings FILE``: every setting of the file that no flag gives explicitly,
    before or after it on the command line (see :func:`read_spectrum_settings`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            settings = read_spectrum_settings(values)
        except HspecError as error:
            parser.error(str(error))
        explicit = getattr(namespace, "explicit_settings", set())
        for key, value in settings.items():
            if key not in explicit:
                setattr(namespace, key, value)
        setattr(namespace, self.dest, values)
