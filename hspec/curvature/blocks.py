"""Parameter blocks: which parameters a curvature operator acts on.

A block B is a subset of the trainable parameters; the operator on B is the diagonal block
H_BB (G_BB, R_BB) of the full matrix: the curvature in the directions of B with every other
parameter held fixed at its value. Its vectors are the parameters of B flattened and
concatenated in ``model.named_parameters()`` order, whatever order the selection names them in.

* :func:`select_parameters` — the names of a block from ``params=`` of
  :func:`hspec.curvature.operators.curvature_operator`: ``None`` (every trainable parameter),
  a list of parameter names, a regular expression (``re.fullmatch`` against each name: it
  must match the whole name, so ``"blocks\\.0\\..*"`` selects the first block's parameters
  and ``"head"`` selects nothing under ``head.``), or a list of ``nn.Module``\\ s (their
  parameters, recursively).
* :func:`layer_blocks` — the default per-layer blocks: trainable parameters grouped by the
  module that owns them directly.
"""

from __future__ import annotations

import re

from torch import nn

from hspec.errors import HspecError


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def layer_blocks(model: nn.Module) -> dict[str, list[str]]:
    """Per-layer blocks: ``{module name: [its trainable parameter names]}``, one entry per
    module that directly owns a trainable parameter (``"fc"`` → ``["fc.weight", "fc.bias"]``),
    in ``named_parameters()`` order; the key is the module's qualified name (``""`` for
    parameters registered on ``model`` itself). A parameter shared by several modules
    belongs to the first that owns it (as ``named_parameters()`` lists it once)."""
    blocks: dict[str, list[str]] = {}
    for name in _trainable(model):
        owner = name.rpartition(".")[0]
        blocks.setdefault(owner, []).append(name)
    return blocks


def select_parameters(model: nn.Module, params) -> list[str]:
    """The trainable parameter names of the block ``params`` selects (the module docstring),
    in ``named_parameters()`` order. A name that is no trainable parameter (unknown, or
    frozen), a pattern or module list that selects none, or an item of another type raises
    one :class:`HspecError` naming it."""
    trainable = _trainable(model)
    if not trainable:
        raise HspecError("model: it has no parameter with requires_grad=True")
    if params is None:
        return list(trainable)
    if isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as error:
            raise HspecError(f"params: {params!r} is not a regular expression ({error})") from None
        chosen = [n for n in trainable if pattern.fullmatch(n)]
        if not chosen:
            raise HspecError(
                f"params: the pattern {params!r} matches no trainable parameter name "
                f"(re.fullmatch; names are like {', '.join(list(trainable)[:3])})"
            )
        return chosen
    if isinstance(params, nn.Module) or not isinstance(params, (list, tuple)) or not params:
        raise HspecError(
            f"params: got {type(params).__name__}; give None, a regular expression, "
            "or a non-empty list of parameter names or modules"
        )
    wanted: set[str] = set()
    for item in params:
        wanted |= _names_of(model, trainable, item)
    return [n for n in trainable if n in wanted]


def _names_of(model: nn.Module, trainable: dict[str, nn.Parameter], item) -> set[str]:
    """The trainable names one item of a ``params`` list stands for."""
    by_id = {id(p): n for n, p in trainable.items()}
    if isinstance(item, str):
        aliases = dict(model.named_parameters(remove_duplicate=False))
        if item not in aliases:
            raise HspecError(f"params: {item!r} is not a parameter of the model")
        if id(aliases[item]) not in by_id:
            raise HspecError(f"params: {item!r} is frozen (requires_grad=False)")
        return {by_id[id(aliases[item])]}
    if isinstance(item, nn.Module):
        owned = list(item.parameters())
        names = {by_id[id(p)] for p in owned if id(p) in by_id}
        if not names:
            where = next((n for n, m in model.named_modules() if m is item), None)
            label = f"{type(item).__name__}" + (f" {where!r}" if where is not None else "")
            reason = "is not part of the model" if where is None else "has no trainable parameter"
            if where is None and not owned:
                reason = "has no parameter"
            raise HspecError(f"params: the module {label} {reason}")
        return names
    raise HspecError(
        f"params: an item of type {type(item).__name__}; the list holds parameter names or modules"
    )
