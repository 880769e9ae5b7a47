"""The project's one checkpoint API: :func:`read_checkpoint` (validated raw contents and metadata),
:func:`load_head` (the head alone, for the evaluators: no encoder, no Lightning) and :func:`load_model` (the
whole model, for embedding and robustness)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

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
    upgrade_checkpoint(ckpt)
    return ckpt, meta


class LoadedHead(NamedTuple):
    """What :func:`load_head` returns: the head module with the checkpoint's Matryoshka metadata."""

    head_type: str
    nesting_dims: list[int]
    head: Any  # a module of mrl.heads (MatryoshkaHead, TiedMatryoshkaHead, FixedFeatureHead), weights loaded
    meta: dict[str, Any]


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the LightningModule (``module.encoder`` the encoder, ``module.task`` the
    task with its heads: ``module.task.head`` for classification) and the checkpoint's Matryoshka metadata (task,
    head, nesting_dims, num_classes, class_names, width, encoder, data_split)."""

    module: Any
    meta: dict[str, Any]


HEAD_STATE_PREFIX = "task.head."
# State-dict prefixes of checkpoints written before the task refactor (encoder and head inside one "model").
LEGACY_PREFIXES = {"model.backbone.": "encoder.", "model.head.": "task.head."}


def upgrade_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the keys of checkpoints from before :mod:`mrl.tasks` renamed to today's (a new dict; an
    up-to-date state dict comes back unchanged)."""
    def rename(key: str) -> str:
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {rename(k): v for k, v in state.items()}


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Bring an older checkpoint's contents up to date in place (state-dict keys; the metadata's ``task`` and
    ``encoder``), so that resuming, loading and evaluating read one format. Returns ``ckpt``."""
    if "state_dict" in ckpt:
        ckpt["state_dict"] = upgrade_state_dict(ckpt["state_dict"])
    meta = ckpt.get(CHECKPOINT_KEY)
    if isinstance(meta, dict):
        meta.setdefault("task", "classification")
        meta.setdefault("encoder", meta.get("backbone"))
    return ckpt


def check_head_type(expected: str | None, actual: str, source: str = "the checkpoint") -> None:
    """``ConfigError('head', ...)`` when the user asked for head ``expected`` but ``source`` has ``actual``."""
    from mrl.heads import HEADS

    if expected is None:
        return
    if expected not in HEADS:
        raise ConfigError("head", f"unknown head type {expected!r}", f"choose one of {sorted(HEADS)} or null")
    if expected != actual:
        raise ConfigError("head", f"{source} is a checkpoint of another head type than asked: "
                          f"it has head '{actual}', the config asks for '{expected}'",
                          f"set head={actual} (or head=null to accept the checkpoint's), or give a '{expected}' "
                          "checkpoint")


def load_head(path: str | Path, expected_head: str | None = None, field: str = "ckpt_path") -> LoadedHead:
    """The head of a checkpoint written by ``scripts/train.py``, rebuilt from its metadata with its weights
    (float32, CPU, eval mode), without building the encoder: what the evaluators need."""
    import torch

    from mrl.heads import create_head

    ckpt, meta = read_checkpoint(path, field)
    path = Path(path).expanduser()
    if meta["task"] != "classification":
        raise ConfigError(field, f"{path} is a '{meta['task']}' checkpoint: it has no classification head",
                          "run the evaluators that need embeddings only (retrieval, adaptive_retrieval)")
    state = {k[len(HEAD_STATE_PREFIX):]: v.detach().float().cpu()
             for k, v in ckpt["state_dict"].items() if k.startswith(HEAD_STATE_PREFIX)}
    if not state:
        raise ConfigError(field, f"{path} holds no head weights ('{HEAD_STATE_PREFIX}*')",
                          "give a checkpoint written by scripts/train.py")
    check_head_type(expected_head, meta["head"], str(path))
    nesting_dims = [int(d) for d in meta["nesting_dims"]]
    head = create_head(meta["head"], nesting_dims, int(meta["num_classes"]))
    with torch.no_grad():
        head.load_state_dict(state)
    return LoadedHead(meta["head"], nesting_dims, head.eval(), dict(meta))


def load_model(path: str | Path, expected_head: str | None = None, field: str = "ckpt_path") -> LoadedModel:
    """The whole model of a checkpoint written by ``scripts/train.py`` (the one way embedding, evaluation and
    robustness load one): the LightningModule rebuilt from the checkpoint's own hyperparameters, its weights
    loaded (CPU, eval mode), and the Matryoshka metadata. The encoder's pretrained weights are never fetched
    again: they are in the checkpoint. Checkpoints from before the task refactor load too (see
    :func:`upgrade_checkpoint`).

        module, meta = mrl.load_model("runs/x/checkpoints/last.ckpt")
        z = module.embed({"image": images})        # [B, width]; z[:, :m] is the size-m embedding
        logits = module.task.head(z)               # [G, B, C] (classification)

    A directory written by ``scripts/export.py`` (a sentence-transformers model with ``matryoshka.json``) loads
    too, through :func:`mrl.export.load_exported`: ``module`` is then an :class:`mrl.export.ExportedModel`
    (``module.encoder``, ``module.embed(batch)``, no task head) and ``meta`` the manifest: the source checkpoint's
    metadata keys and values, plus ``quality``, ``full_dim``, ``truncate_then_normalize``, ``pooling``, ...

        module, meta = mrl.load_model("exported/")
        z = module.embed(module.encoder.tokenize(texts))   # [B, width]
    """
    from mrl.export import is_exported_model, load_exported
    from mrl.lightning import MatryoshkaModule

    if is_exported_model(path):
        loaded = load_exported(path, field)
        check_head_type(expected_head, loaded.meta["head"], str(Path(path).expanduser()))
        return loaded
    ckpt, meta = read_checkpoint(path, field)
    check_head_type(expected_head, meta["head"], str(Path(path).expanduser()))
    hparams = dict(ckpt["hyper_parameters"])
    hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "pretrained_path": None}
    if hparams["backbone"].get("name") == "dual":  # a dual encoder's towers: their weights are in the checkpoint too
        backbone = {k: v for k, v in hparams["backbone"].items() if k not in ("pretrained", "pretrained_path")}
        hparams["backbone"] = {**backbone, **{tower: {**backbone[tower], "pretrained": False, "pretrained_path": None}
                                              for tower in ("image", "text")}}
    hparams["compile"] = False  # a loaded model is for inference; compile it again where that pays
    module = MatryoshkaModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return LoadedModel(module.eval(), dict(meta))
