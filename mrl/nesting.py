"""Nesting sizes (the prefixes an MRL embedding is trained to be good at) and their loss weights."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from mrl.errors import ConfigError

MIN_AUTO_DIM = 8


def auto_nesting_dims(width: int, min_dim: int = MIN_AUTO_DIM) -> list[int]:
    """The paper's default list: ``width`` halved repeatedly while the size stays >= ``min_dim``.

    ResNet-50 (2048) gives 8, 16, ..., 2048; a 768-wide ViT or BERT gives 12, 24, ..., 768.
    """
    if width < 1:
        raise ConfigError("model.nesting_dims", f"backbone width must be positive, got {width}")
    dims = [width]
    while dims[-1] % 2 == 0 and dims[-1] // 2 >= min_dim:
        dims.append(dims[-1] // 2)
    return dims[::-1]


def resolve_nesting_dims(spec: str | Sequence[int] | None, width: int, warn_partial: bool = True) -> list[int]:
    """Turn the ``nesting_dims`` setting into a validated, strictly increasing list of sizes.

    ``spec`` is ``"auto"``/``None`` (see :func:`auto_nesting_dims`) or a list of positive ints, each
    ``<= width``. Warns (with ``warn_partial``) when ``width`` itself is not in the list: the full
    embedding then gets no loss.
    """
    field = "model.nesting_dims"
    if spec is None or (isinstance(spec, str) and spec == "auto"):
        return auto_nesting_dims(width)
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise ConfigError(field, f"expected 'auto' or a list of ints, got {spec!r}",
                          "write e.g. model.nesting_dims=[8,16,32]")
    dims = list(spec)
    if not dims:
        raise ConfigError(field, "is empty", "give at least one size, or 'auto'")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise ConfigError(field, f"sizes must be ints, got {d!r} in {dims}")
        if d <= 0:
            raise ConfigError(field, f"sizes must be positive, got {d} in {dims}",
                              "remove zero and negative sizes")
    if len(set(dims)) != len(dims):
        raise ConfigError(field, f"has duplicate sizes {dims}", "list each size once")
    if dims != sorted(dims):
        raise ConfigError(field, f"must be strictly increasing, got {dims}",
                          f"sort it: {sorted(dims)}")
    if dims[-1] > width:
        raise ConfigError(field, f"size {dims[-1]} is larger than the backbone's embedding width {width}",
                          f"use sizes <= {width}")
    if warn_partial and dims[-1] != width:
        warnings.warn(f"model.nesting_dims {dims} does not include the full embedding width {width}: "
                      "the full-size embedding gets no loss of its own", stacklevel=2)
    return dims


def resolve_loss_weights(weights: Sequence[float] | None, nesting_dims: Sequence[int]) -> list[float]:
    """Validate the per-size loss weights (the paper's ``relative_importance``); default all ones."""
    field = "model.loss_weights"
    if weights is None:
        return [1.0] * len(nesting_dims)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ConfigError(field, f"expected a list of numbers, got {weights!r}")
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected numbers, got {list(weights)}") from None
    if any(w != w for w in weights):
        raise ConfigError(field, f"contains NaN: {weights}")
    if len(weights) != len(nesting_dims):
        raise ConfigError(field, f"has {len(weights)} values but nesting_dims has {len(nesting_dims)} "
                          f"sizes {list(nesting_dims)}", "give one weight per size, or null for all ones")
    if any(w < 0 for w in weights):
        raise ConfigError(field, f"weights must be >= 0, got {weights}")
    if not any(w > 0 for w in weights):
        raise ConfigError(field, "all weights are zero, so nothing would be trained",
                          "give at least one positive weight")
    return weights
