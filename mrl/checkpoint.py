"""Reading the project's checkpoints without importing Lightning (evaluators stay light)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrl.errors import ConfigError

CHECKPOINT_KEY = "mrl"  # the entry with head type, nesting sizes, classes and data split


def read_checkpoint(path: str | Path, field: str = "ckpt_path",
                    metadata_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, checkpoint['mrl'])`` of a ``.ckpt`` written by ``scripts/train.py``, or a one-line
    :class:`ConfigError` naming ``field`` when the file is missing, unreadable or not ours. ``metadata_only``:
    the tensors are memory-mapped rather than read (a caller that only wants the run's metadata)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(field, f"{path} does not exist", "give the .ckpt written by scripts/train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=metadata_only)
    except Exception as err:
        raise ConfigError(field, f"cannot read checkpoint {path} ({type(err).__name__})",
                          "give a checkpoint written by this project") from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None or "state_dict" not in ckpt:
        raise ConfigError(field, f"{path} is not an mrl checkpoint (no '{CHECKPOINT_KEY}' or 'state_dict' entry)",
                          "give a checkpoint written by scripts/train.py")
    return ckpt, meta
