"""Export a trained text model as a sentence-transformers model directory, with a Matryoshka manifest.

:func:`export_sentence_transformer` writes, from a ``.ckpt`` of ``scripts/train.py`` with an ``hf/`` encoder::

    <output_dir>/
        config.json, model.safetensors, tokenizer files   the fine-tuned transformer (``save_pretrained``)
        sentence_bert_config.json                         max_seq_length = the encoder's max_length
        1_Pooling/config.json                             mean or cls, as the encoder pooled
        modules.json                                      Transformer -> Pooling (no Normalize: see below)
        config_sentence_transformers.json                 similarity_fn_name: cosine
        matryoshka.json                                   the manifest (MANIFEST_NAME)

``SentenceTransformer(output_dir, truncate_dim=m).encode(texts)`` then gives our ``embed(batch)[:, :m]`` and,
L2-normalised, our size-m embedding. sentence-transformers applies ``truncate_dim`` after every module, so a
``Normalize`` module would normalise the full vector before truncation; our sizes are trained as truncate first,
normalise after, hence no ``Normalize`` in the pipeline (cosine similarity, the saved ``similarity_fn_name``,
normalises each pair itself; ``encode(..., normalize_embeddings=True)`` normalises after truncation). The files
are the format every sentence-transformers version since 2.0 loads; writing them needs no sentence-transformers.

The manifest holds the checkpoint's own metadata (``task``, ``head``, ``nesting_dims``, ``width``, ``encoder``, ...,
the keys :func:`mrl.load_model` returns for the checkpoint, with the same values) and: ``full_dim``,
``truncate_then_normalize: true`` with ``truncation`` saying what that means, ``pooling``, ``max_length``,
``similarity``, ``source_checkpoint``, and ``quality``: the measured per-size tables, copied from files (the run's
``metrics_by_dim.json`` and ``eval/*.json``, or the ``quality=`` files given), ``null`` when there are none, with
``quality_note`` saying where they came from. :func:`load_exported` (what :func:`mrl.load_model` does for an
exported directory) reads it back.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrl.checkpoint import LoadedModel, load_model, read_checkpoint
from mrl.errors import ConfigError

MANIFEST_NAME = "matryoshka.json"
MANIFEST_FORMAT = "mrl.matryoshka/1"
TRUNCATION = ("The size-m embedding is the first m coordinates of the full embedding, L2-normalised after "
              "truncation (truncate, then normalise): SentenceTransformer(path, truncate_dim=m).encode(texts, "
              "normalize_embeddings=True), or cosine similarity on the truncated vectors. The pipeline has no "
              "Normalize module, because sentence-transformers truncates after all modules: normalising the full "
              "vector first would leave every shorter embedding with a norm below 1, so that its dot products "
              "are not its cosines.")
POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


class ExportedModel(nn.Module):
    """An exported model loaded back (what :func:`mrl.load_model` returns as ``module`` for an exported
    directory): ``encoder`` a :class:`mrl.encoders.text.TextEncoder` over the exported transformer, with the
    manifest's pooling and max_length. There is no task head: an export keeps the encoder alone."""

    def __init__(self, encoder: nn.Module, nesting_dims: Sequence[int]):
        super().__init__()
        self.encoder = encoder
        self.nesting_dims = [int(m) for m in nesting_dims]

    @property
    def width(self) -> int:
        return self.encoder.width

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-width embedding ``[B, width]`` of a tokenized batch (``encoder.tokenize(texts)``); its first m
        coordinates are the size-m embedding, as ``MatryoshkaModule.embed``."""
        return self.encoder(batch)

    forward = embed


def is_exported_model(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`export_sentence_transformer` (it holds the manifest)."""
    return (Path(path).expanduser() / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path, field: str = "ckpt_path") -> dict[str, Any]:
    """The manifest of an exported directory, or a one-line :class:`ConfigError` naming ``field``."""
    file = Path(path).expanduser() / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(field, f"cannot read {file} ({type(err).__name__})",
                          "export the checkpoint again with scripts/export.py") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(field, f"{file} is not an mrl Matryoshka manifest (format {MANIFEST_FORMAT!r})",
                          "export the checkpoint again with scripts/export.py")
    return manifest


def load_exported(path: str | Path, field: str = "ckpt_path") -> LoadedModel:
    """``(ExportedModel, manifest)`` of a directory written by :func:`export_sentence_transformer` (CPU, eval
    mode). The manifest is the metadata: every key :func:`mrl.load_model` gives for the source checkpoint, with the
    same values, plus the export's (``quality``, ``full_dim``, ``truncate_then_normalize``, ``pooling``, ...)."""
    from mrl.encoders.text import TextEncoder

    manifest = read_manifest(path, field)
    encoder = TextEncoder(str(Path(path).expanduser()), pooling=manifest["pooling"],
                          max_length=int(manifest["max_length"]))
    return LoadedModel(ExportedModel(encoder, manifest["nesting_dims"]).eval(), manifest)


def _cell(value: str) -> Any:
    """A CSV cell as the number or boolean it spells (the evaluators' tables write both), else the string."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_quality_table(path: str | Path, field: str = "quality") -> dict[str, Any]:
    """A measured per-size table as it is in the file, with ``source`` (the resolved path) added: a JSON table of
    ours (``{"rows": [{"dim": m, ...}, ...], "title", ...}``, e.g. ``metrics_by_dim.json``, ``<eval>/sts.json``) or
    a CSV with a ``dim`` column (every row a size). A file that is no such table: one-line :class:`ConfigError`."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as handle:
                table: Any = {"rows": [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]}
        else:
            table = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(field, f"cannot read {path} ({type(err).__name__})",
                          "give a per-size table written by this project (.json or .csv)") from None
    rows = table.get("rows") if isinstance(table, dict) else None
    if not rows or not all(isinstance(row, dict) and "dim" in row for row in rows):
        raise ConfigError(field, f"{path} is not a per-size table (no rows with a 'dim')",
                          "give e.g. <run>/metrics_by_dim.json or <eval dir>/sts.json")
    return {"source": str(path.resolve()), **table}


def find_quality_tables(ckpt_path: str | Path) -> list[Path]:
    """The measured tables of the run that wrote ``ckpt_path`` (``<run>/checkpoints/x.ckpt``, or a checkpoint
    lying in its run folder): ``<run>/metrics_by_dim.json``, then every ``<run>/eval/*.json`` per-size table
    (the study layout of scripts/eval.py: classification, retrieval, sts, ...). Empty when there are none."""
    ckpt_path = Path(ckpt_path).expanduser().resolve()
    run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    candidates = [run / "metrics_by_dim.json", *sorted((run / "eval").glob("*.json"))]
    found = []
    for path in candidates:
        try:
            read_quality_table(path)
        except ConfigError:  # not a table (or not there): only tables are quality
            continue
        found.append(path)
    return found


def _quality(ckpt_path: Path, quality: str | Path | Sequence[str | Path] | None) -> tuple[Any, str]:
    """``(quality, quality_note)`` of the manifest: ``{table name: table}`` from the given files, or else from the
    run's own files; ``None`` when there are none (never made up)."""
    if quality:
        paths = [Path(quality)] if isinstance(quality, (str, Path)) else [Path(q) for q in quality]
        note = "measured tables given to the export (quality=...)"
    else:
        paths = find_quality_tables(ckpt_path)
        note = "measured tables found in the checkpoint's run folder (metrics_by_dim.json, eval/*.json)"
    if not paths:
        return None, (f"no measured table found beside {ckpt_path} (metrics_by_dim.json, eval/*.json); export "
                      "with quality=<table> to record one")
    tables: dict[str, Any] = {}
    for path in paths:
        name, n = path.expanduser().stem, 2
        while name in tables:  # two files of one name from different folders
            name, n = f"{path.stem}_{n}", n + 1
        tables[name] = read_quality_table(path)
    return tables, note


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError("output_dir", f"{output_dir} is a file", "give a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError("output_dir", f"{output_dir} is not empty",
                          "give a new directory, or overwrite=true to replace it")


def _write_sentence_transformer(encoder: nn.Module, folder: Path) -> None:
    """The sentence-transformers files of a :class:`~mrl.encoders.text.TextEncoder` into ``folder``: the
    transformer at the root (module 0), the pooling in ``1_Pooling`` (module 1)."""
    import transformers

    import mrl

    encoder.model.save_pretrained(folder, safe_serialization=True)
    encoder.tokenizer.save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": encoder.max_length, "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": encoder.width, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, POOLING_FLAGS[encoder.pooling]: True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    # No "sentence_transformers" version: it written here would only make older versions warn that it is newer.
    config = {"__version__": {"mrl": mrl.__version__, "transformers": transformers.__version__,
                              "pytorch": torch.__version__},
              "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))


def _replace_dir(source: Path, target: Path) -> None:
    """Move the finished ``source`` to ``target`` by renames (same file system), replacing an existing
    ``target``, so ``target`` is at every moment absent, the old folder or the complete new one."""
    if target.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
        source.rename(target)
        shutil.rmtree(old)
    else:
        source.rename(target)


def export_sentence_transformer(ckpt_path: str | Path, output_dir: str | Path,
                                quality: str | Path | Sequence[str | Path] | None = None,
                                overwrite: bool = False) -> Path:
    """Write the text model of ``ckpt_path`` (a ``.ckpt`` of ``scripts/train.py`` with an ``hf/`` encoder) as a
    sentence-transformers directory with the Matryoshka manifest (see the module docstring); returns
    ``output_dir``.

    Args:
        ckpt_path: the checkpoint to export.
        output_dir: the directory to write; it must not exist or be empty, unless ``overwrite``.
        quality: measured per-size tables to record (paths of ``.json``/``.csv`` tables, see
            :func:`read_quality_table`); ``None``: the run's own (:func:`find_quality_tables`).
        overwrite: replace a non-empty ``output_dir``.

    Everything is written into a temporary folder beside ``output_dir`` and renamed into place, so a failure
    leaves no half-written model. Bad input (an image checkpoint, a non-empty ``output_dir``, an unreadable
    table): a one-line :class:`ConfigError` before anything is written.
    """
    ckpt_path = Path(ckpt_path).expanduser()
    output_dir = Path(output_dir).expanduser().resolve()
    _check_output_dir(output_dir, overwrite)
    _, meta = read_checkpoint(ckpt_path, metadata_only=True)
    encoder_name = str(meta.get("encoder") or "")
    if not encoder_name.startswith("hf/"):
        raise ConfigError("ckpt_path", f"{ckpt_path} has the image encoder {encoder_name!r}: only text (hf/...) "
                          "models export to sentence-transformers", "give the checkpoint of a text model")
    quality_tables, quality_note = _quality(ckpt_path, quality)

    module, meta = load_model(ckpt_path)
    encoder = module.encoder
    manifest = {"format": MANIFEST_FORMAT, **meta, "nesting_dims": [int(m) for m in meta["nesting_dims"]],
                "full_dim": int(encoder.width), "truncate_then_normalize": True, "truncation": TRUNCATION,
                "pooling": encoder.pooling, "max_length": int(encoder.max_length), "similarity": "cosine",
                "source_checkpoint": str(ckpt_path.resolve()), "quality": quality_tables,
                "quality_note": quality_note}
    text = json.dumps(manifest, indent=2, default=str)  # data_split may hold paths: kept as their text

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        _write_sentence_transformer(encoder, staging)
        (staging / MANIFEST_NAME).write_text(text)
        _replace_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there when something failed
    return output_dir
