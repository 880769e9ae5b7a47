"""Export to sentence-transformers: a MiniLM fine-tuned here (one optimiser step, so its weights are no longer the
packaged ones) round-trips through ``SentenceTransformer(dir, truncate_dim=m)`` at every trained size, with the
Matryoshka manifest, and loads back through ``mrl.load_model``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mrl
from mrl.errors import ConfigError
from mrl.export import MANIFEST_NAME, export_sentence_transformer
from mrl.lightning import MatryoshkaModule

from conftest import PROJECT_ROOT

DIMS = [12, 48, 384]
TEXTS = ["What is the capital of France?", "How many legs does a spider have?", "Who wrote Hamlet?",
         "a short one", "Define photosynthesis, please, in a few words and with an example or two.", "Why?"]
TRAIN = [("What city hosts the Louvre?", 0), ("Who painted the Mona Lisa?", 1), ("How far is the Moon?", 2),
         ("Which river flows through Cairo?", 0), ("Who discovered penicillin?", 1), ("How old is the Earth?", 2)]


def _fit_and_save(module: MatryoshkaModule, loader: DataLoader, path) -> None:
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)


def _text_loader(module: MatryoshkaModule) -> DataLoader:
    texts, labels = zip(*TRAIN)
    tokens = module.encoder.tokenize(texts)
    return DataLoader(TensorDataset(tokens["input_ids"], tokens["attention_mask"], torch.tensor(labels)),
                      batch_size=6, collate_fn=lambda rows: dict(zip(("input_ids", "attention_mask", "label"),
                                                                     map(torch.stack, zip(*rows)))))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """``(run dir, checkpoint)``: MiniLM with an MRL head on 3 classes, one AdamW step, saved as a run of
    scripts/train.py lays it out, with a measured table at the run's root and an STS table in ``eval/``."""
    torch.manual_seed(0)
    module = MatryoshkaModule(backbone={"name": "hf/minilm", "max_length": 16}, nesting_dims=DIMS, num_classes=3,
                              head="mrl", optimizer={"name": "adamw", "lr": 1e-3})
    run = tmp_path_factory.mktemp("run")
    ckpt = run / "checkpoints" / "last.ckpt"
    _fit_and_save(module, _text_loader(module), ckpt)
    table = {"title": "test accuracy by representation size", "rows": [{"dim": m, "top1": 50.0 + i}
                                                                        for i, m in enumerate(DIMS)]}
    (run / "metrics_by_dim.json").write_text(json.dumps(table))
    (run / "eval").mkdir()
    (run / "eval" / "sts.json").write_text(json.dumps({"rows": [{"dim": m, "spearman": 0.5} for m in DIMS]}))
    (run / "eval" / "eval_notes.json").write_text(json.dumps({"not": "a table"}))  # skipped: no per-size rows
    return run, ckpt


@pytest.fixture(scope="module")
def exported(text_run, tmp_path_factory):
    return export_sentence_transformer(text_run[1], tmp_path_factory.mktemp("export") / "model")


def _ours(ckpt, texts) -> torch.Tensor:
    module, _ = mrl.load_model(ckpt)
    with torch.no_grad():
        return module.embed(module.encoder.tokenize(texts))


def test_sentence_transformers_gives_our_embeddings_at_every_size(text_run, exported):
    from sentence_transformers import SentenceTransformer

    ours = _ours(text_run[1], TEXTS)  # [6, 384]
    for m in DIMS:
        st = SentenceTransformer(str(exported), device="cpu", truncate_dim=m)
        theirs = st.encode(TEXTS, convert_to_tensor=True, batch_size=4)  # sorted and batched by length
        assert theirs.shape == (len(TEXTS), m) and st.similarity_fn_name == "cosine"
        torch.testing.assert_close(theirs, ours[:, :m], rtol=0, atol=1e-5)
        unit = torch.nn.functional.normalize(ours[:, :m], dim=-1)  # truncate, then normalise
        torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True), unit,
                                   rtol=0, atol=1e-5)
    assert st.max_seq_length == 16 and [type(x).__name__ for x in st] == ["Transformer", "Pooling"]


def test_cls_pooling_round_trips(tmp_path):
    from sentence_transformers import SentenceTransformer

    module = MatryoshkaModule(backbone={"name": "hf/minilm", "max_length": 12, "pooling": "cls"},
                              nesting_dims=[24, 384], num_classes=3, head="mrle",
                              optimizer={"name": "adamw", "lr": 1e-3})
    _fit_and_save(module, _text_loader(module), tmp_path / "cls.ckpt")
    out = export_sentence_transformer(tmp_path / "cls.ckpt", tmp_path / "cls")
    ours = _ours(tmp_path / "cls.ckpt", TEXTS)
    st = SentenceTransformer(str(out), device="cpu", truncate_dim=24)
    torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True), ours[:, :24], rtol=0, atol=1e-5)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (manifest["pooling"], manifest["head"], manifest["max_length"]) == ("cls", "mrle", 12)


def test_the_export_is_the_trained_model_not_the_pretrained_one(text_run):
    from mrl.encoders.text import TextEncoder

    pretrained = TextEncoder("minilm", max_length=16).eval()
    with torch.no_grad():
        before = pretrained(pretrained.tokenize(TEXTS))
    assert (before - _ours(text_run[1], TEXTS)).abs().max() > 1e-3  # the round trip above checks trained weights


def test_manifest(text_run, exported):
    run, ckpt = text_run
    manifest = json.loads((exported / MANIFEST_NAME).read_text())
    assert manifest["format"] == "mrl.matryoshka/1"
    assert manifest["nesting_dims"] == DIMS and manifest["full_dim"] == 384
    assert manifest["truncate_then_normalize"] is True and "truncat" in manifest["truncation"]
    assert manifest["head"] == "mrl" and manifest["task"] == "classification" and manifest["encoder"] == "hf/minilm"
    assert manifest["pooling"] == "mean" and manifest["max_length"] == 16 and manifest["similarity"] == "cosine"
    assert manifest["source_checkpoint"] == str(ckpt.resolve())
    # the measured tables, copied as they are, with their source; a JSON file without per-size rows is not one
    quality = manifest["quality"]
    assert sorted(quality) == ["metrics_by_dim", "sts"]
    assert quality["metrics_by_dim"]["source"] == str(run / "metrics_by_dim.json")
    assert quality["metrics_by_dim"]["rows"] == json.loads((run / "metrics_by_dim.json").read_text())["rows"]
    assert quality["sts"]["rows"] == [{"dim": m, "spearman": 0.5} for m in DIMS]
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]  # no Normalize
    assert not list(exported.parent.glob(".*"))  # no staging folder left beside it


def test_quality_from_a_given_table_or_none(text_run, tmp_path):
    run, ckpt = text_run
    table = tmp_path / "sts.csv"
    table.write_text("dim,spearman,trained\n12,0.71,True\n384,0.8,True\n")
    out = export_sentence_transformer(ckpt, tmp_path / "given", quality=table)
    quality = json.loads((out / MANIFEST_NAME).read_text())["quality"]
    assert quality == {"sts": {"source": str(table), "rows": [{"dim": 12, "spearman": 0.71, "trained": True},
                                                              {"dim": 384, "spearman": 0.8, "trained": True}]}}
    with pytest.raises(ConfigError, match=r"^quality: .* is not a per-size table"):
        export_sentence_transformer(ckpt, tmp_path / "bad", quality=run / "eval" / "eval_notes.json")
    assert not (tmp_path / "bad").exists()

    lone = tmp_path / "lone"  # a checkpoint away from its run: nothing measured, and the manifest says so
    lone.mkdir()
    os.link(ckpt, lone / "model.ckpt")  # a hard link: the same file, no copy of the weights
    out = export_sentence_transformer(lone / "model.ckpt", tmp_path / "none")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["quality"] is None and "no measured table" in manifest["quality_note"]


def test_non_empty_output_is_refused_unless_overwrite(text_run, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"^output_dir: .* is not empty; .*overwrite=true"):
        export_sentence_transformer(text_run[1], out)
    assert (out / "keep.txt").read_text() == "mine"
    export_sentence_transformer(text_run[1], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / MANIFEST_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old folder and the staging one are gone


def test_image_checkpoint_is_one_line_error(tmp_path):
    module = MatryoshkaModule(backbone={"name": "mlp", "in_chans": 1, "image_size": 4, "width": 16,
                                        "hidden_dim": 32}, nesting_dims=[4, 16], num_classes=3)
    loader = DataLoader(TensorDataset(torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=6)
    _fit_and_save(module, loader, tmp_path / "image.ckpt")
    with pytest.raises(ConfigError, match=r"^ckpt_path: .* image encoder 'mlp': only text") as info:
        export_sentence_transformer(tmp_path / "image.ckpt", tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_load_model_reads_the_export(text_run, exported):
    ckpt_module, ckpt_meta = mrl.load_model(text_run[1])
    module, meta = mrl.load_model(exported)
    assert type(module).__name__ == "ExportedModel" and module.nesting_dims == DIMS and module.width == 384
    assert module.encoder.pooling == "mean" and module.encoder.max_length == 16
    # every metadata key of the checkpoint, with its value; the export adds its own (quality, ...)
    assert json.loads(json.dumps(ckpt_meta)).items() <= meta.items()
    assert set(meta) - set(ckpt_meta) >= {"quality", "full_dim", "truncate_then_normalize", "pooling", "max_length"}
    with torch.no_grad():
        torch.testing.assert_close(module.embed(module.encoder.tokenize(TEXTS)), _ours(text_run[1], TEXTS),
                                   rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="^head: .* has head 'mrl', the config asks for 'ff'"):
        mrl.load_model(exported, expected_head="ff")


def test_script_errors_are_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/export.py", f"ckpt_path={tmp_path / 'missing.ckpt'}",
                           f"output_dir={tmp_path / 'out'}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: ckpt_path: {tmp_path / 'missing.ckpt'} does not exist; "
                                                "give the .ckpt written by scripts/train.py"]


def test_script_exports_with_given_tables(text_run, tmp_path):
    run, ckpt = text_run
    tables = f"[{run / 'metrics_by_dim.json'},{run / 'eval' / 'sts.json'}]"
    proc = subprocess.run([sys.executable, "scripts/export.py", f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'out'}",
                           f"quality={tables}"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert sorted(manifest["quality"]) == ["metrics_by_dim", "sts"] and "quality=" in manifest["quality_note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no Hydra folders: the export alone
