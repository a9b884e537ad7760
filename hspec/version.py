"""hspec's version: the one in pyproject.toml, as installed (``importlib.metadata``)."""

from importlib import metadata

__version__ = metadata.version("hspec")
