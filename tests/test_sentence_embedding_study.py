"""The peer comparison of results/sentence_embeddings (scripts/sentence_embedding_study.py, scripts/peer_st_train.py):
the peer's sentence-transformers model starts from exactly our encoder's embeddings and its MatryoshkaLoss(MNRL) is
our contrastive Matryoshka loss on the same batch; the report builds its table, CSV and plot from unit outputs
alone; finished units are skipped."""

from __future__ import annotations

import json
import statistics
import sys

import pytest
import torch
from conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))
from scripts import sentence_embedding_study as study

TEXTS = ["A man is playing a guitar.", "hi",
         "Two dogs run across a snowy field while a child in a red coat watches them from the porch of an old "
         "wooden house at the edge of the forest, far beyond the frozen lake where skaters glide " * 2]
TRIPLETS = [("A man plays a guitar on stage.", "A man is performing music.", "A man is sleeping."),
            ("Two dogs run in the snow.", "Animals are outside.", "The dogs are asleep indoors."),
            ("A woman cooks dinner.", "Someone is preparing food.", "A woman is swimming."),
            ("Kids play soccer in a park.", "Children are playing a game.", "The kids are at school.")]


@pytest.fixture(scope="module")
def peer():
    pytest.importorskip("sentence_transformers")
    from scripts.peer_st_train import build_peer_model

    return build_peer_model("minilm", max_length=64, pooling="mean")


def test_the_peer_starts_from_our_encoders_embeddings(peer):
    from mrl.encoders.text import TextEncoder

    ours = TextEncoder("minilm", pooling="mean", max_length=64).eval()
    with torch.no_grad():
        expected = ours(ours.tokenize(TEXTS))
    theirs = peer.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    assert [type(m).__name__ for m in peer] == ["Transformer", "Pooling"] and peer.max_seq_length == 64
    torch.testing.assert_close(theirs, expected, rtol=0, atol=1e-5)
    # the study's evaluation path gives the same vectors
    torch.testing.assert_close(torch.from_numpy(study.embed_texts(ours, TEXTS)), expected, rtol=0, atol=1e-5)


def test_the_peers_matryoshka_loss_is_ours_on_the_same_batch(peer):
    from mrl.data.pairs import PairCollate
    from mrl.lightning import MatryoshkaModule
    from scripts.peer_st_train import DIMS, peer_loss

    module = MatryoshkaModule(backbone={"name": "hf/minilm", "max_length": 64, "pooling": "mean"},
                              task="contrastive", nesting_dims=sorted(DIMS), loss="mnrl", scale=20.0).eval()
    batch = PairCollate(module.encoder.tokenizer, 64)([{"texts": row} for row in TRIPLETS])
    peer.eval()
    with torch.no_grad():
        ours = (module.task.loss(module(batch), batch) * module.loss_weights).sum()
        features = [peer.preprocess(list(column)) for column in zip(*TRIPLETS)]
        theirs = peer_loss(peer, DIMS, 20.0)(features, None)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_peers_trainer_decays_the_weights_ours_does(peer, tmp_path):
    """Weight decay 0.01 on the same tensors (not on biases and LayerNorm weights), AdamW at 2e-5, linear warm-up of
    20 steps from 0 then linear decay to 0 over 198 steps, as our preset with start_factor=0."""
    pytest.importorskip("accelerate")  # sentence-transformers' trainer needs it (the dev and peer extras)
    from sentence_transformers import SentenceTransformerTrainer

    from mrl.optim import lr_multiplier, param_groups
    from scripts.peer_st_train import DIMS, peer_loss, training_args, triplets_dataset

    trainer = SentenceTransformerTrainer(model=peer, args=training_args(tmp_path, seed=42),
                                         train_dataset=triplets_dataset(TRIPLETS), loss=peer_loss(peer, DIMS))
    names = {id(p): n for n, p in peer.named_parameters()}
    ours = {names[id(p)] for p in param_groups(peer, 0.01)[0]["params"]}
    assert ours == set(trainer.get_decay_parameter_names(peer)) and len(ours) > 30
    optimizer = trainer.create_optimizer()
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.01}
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 2e-5
    scheduler = trainer.create_scheduler(198, optimizer)
    theirs = []
    for _ in range(198):
        theirs.append(scheduler.get_last_lr()[0] / 2e-5)
        optimizer.step()
        scheduler.step()
    expected = [lr_multiplier(s, 198, "linear_warmup_decay", warmup_steps=round(0.1 * 198), start_factor=0.0)
                for s in range(198)]
    assert theirs == pytest.approx(expected, abs=1e-9)
    assert trainer.args.max_grad_norm == 0 and trainer.args.dataloader_drop_last


def _fake_unit(results, arm, seed, base, checks=None):
    spearman = {str(m): base - 40.0 / m for m in study.DIMS}
    unit = study.unit_name(arm, seed)
    out = results / "runs" / unit
    out.mkdir(parents=True)
    (out / study.RESULT).write_text(json.dumps({
        "unit": unit, "arm": arm, "seed": seed, "dims": list(study.DIMS), "spearman": spearman,
        "checks": checks or {}, "train_wall_seconds": None if arm == "pretrained" else 600.0}))
    (out / "command.txt").write_text(f"python train {unit}\n")
    return spearman


def test_the_report_is_built_from_unit_outputs_alone(tmp_path):
    values = {("pretrained", None): 80.0, ("ff384", 42): 84.0, ("mrl", 42): 85.0, ("mrl", 43): 85.4,
              ("st_matryoshka", 42): 85.2, ("st_matryoshka", 43): 85.0}
    checks = {"ff384": {"trainer_test_max_abs_diff": 0.001}, "mrl": {"trainer_test_max_abs_diff": 0.002},
              "st_matryoshka": {"st_encode_max_abs_diff": 1e-6}}
    written = {key: _fake_unit(tmp_path, *key, base, checks.get(key[0])) for key, base in values.items()}
    (tmp_path / study.BENCHMARK).write_text(json.dumps({
        "description": "fake", "repeats": 5, "threads": 2, "machine": "m", "cpus": 2, "torch": "t",
        "sentence_transformers": "s", "comparisons": {"step": {"what": "training step", "unit": "ms/step",
                                                               "ours": 90.0, "peer": 100.0, "ratio": 0.9}}}))

    files = study.write_report(tmp_path)
    assert {f.name for f in files} == {"README.md", "sts_by_size.json", "sts_by_size.csv", "sts_by_size.png"}
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    rows = {row["dim"]: row for row in json.loads((tmp_path / "sts_by_size.json").read_text())["rows"]}
    for m in study.DIMS:
        ours = [written[("mrl", s)][str(m)] for s in (42, 43)]
        peer = [written[("st_matryoshka", s)][str(m)] for s in (42, 43)]
        row = rows[m]
        assert row["mrl"]["mean"] == pytest.approx(statistics.fmean(ours))
        assert row["mrl"]["std"] == pytest.approx(statistics.stdev(ours))
        assert row["pretrained"]["std"] is None and row["pretrained"]["n"] == 1
        assert row["ff384"]["kept"] == pytest.approx(written[("ff384", 42)][str(m)] / written[("ff384", 42)]["384"])
        assert row["ours_minus_peer"] == pytest.approx(statistics.fmean(ours) - statistics.fmean(peer))
        noise = 2 * (statistics.stdev(ours) ** 2 / 2 + statistics.stdev(peer) ** 2 / 2) ** 0.5
        assert row["noise"] == pytest.approx(noise) and row["within_noise"] == (abs(row["ours_minus_peer"]) <= noise)
        assert row["share_of_full_size"] == pytest.approx(m / 384)
    readme = (tmp_path / "README.md").read_text()
    assert "partial: 6 of 10 units finished" in readme
    for unit in ("ff384-seed43", "mrl-seed44", "st_matryoshka-seed44", "ff384-seed44"):
        assert f"`{unit}`" in readme.split("\n")[2]
    m12 = rows[12]
    assert f"| 12 | {100 * 12 / 384:.1f} % | {m12['pretrained']['mean']:.2f} (1) |" in readme
    assert f"{m12['mrl']['mean']:.2f} ± {m12['mrl']['std']:.2f} (2)" in readme
    assert "| training step | 90.0 ms/step | 100.0 ms/step | 0.900 | 5 |" in readme
    assert "python train mrl-seed43" in readme
    csv_lines = (tmp_path / "sts_by_size.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dim,share_of_full_size,pretrained_mean") and len(csv_lines) == 1 + len(study.DIMS)


def test_a_rerun_skips_finished_units_and_only_reports(tmp_path, monkeypatch):
    for arm, seed in study.units([42]):
        _fake_unit(tmp_path, arm, seed, 80.0, {"trainer_test_max_abs_diff": 0.0, "st_encode_max_abs_diff": 0.0})
    monkeypatch.setattr(study, "stsb_test", lambda data_dir: None)
    monkeypatch.setattr(study, "run_training", lambda *a: pytest.fail("a finished unit was trained again"))
    monkeypatch.setattr(study, "evaluate_unit", lambda *a: pytest.fail("a finished unit was evaluated again"))
    assert study.main(["run", "--seeds", "42", "--results", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                       "--repo", str(tmp_path)]) == 0
    assert "complete" not in (tmp_path / "README.md").read_text().split("\n")[2]  # seeds 43, 44 are still missing
    assert [study.unit_name(a, s) for a, s in study.units([42, 43])][:5] == [
        "pretrained", "mrl-seed42", "st_matryoshka-seed42", "ff384-seed42", "mrl-seed43"]


def test_drivers_side_by_side_split_the_units_by_lock(tmp_path, monkeypatch):
    """A unit another driver holds (its lock taken by a second process) is neither trained nor its run directory
    touched; the free units are done."""
    import fcntl
    import subprocess
    import sys

    work = tmp_path / "w"
    (work / "mrl-seed43").mkdir(parents=True)
    (work / "mrl-seed43" / "driver.log").write_text("the other driver's run\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; h = open(sys.argv[1], 'w'); fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True);"
        " time.sleep(60)"), str(work / ".mrl-seed43.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = []
        monkeypatch.setattr(study, "stsb_test", lambda data_dir: None)
        monkeypatch.setattr(study, "run_unit", lambda arm, seed, *a: done.append(study.unit_name(arm, seed)))
        monkeypatch.setattr(study, "write_report", lambda results: [])
        assert study.main(["run", "--seeds", "43", "--arms", "mrl", "ff384", "--results", str(tmp_path / "r"),
                           "--work-dir", str(work), "--repo", str(tmp_path)]) == 0
        assert done == ["ff384-seed43"]
        assert (work / "mrl-seed43" / "driver.log").read_text() == "the other driver's run\n"
    finally:
        holder.kill()
        holder.wait()
    with open(work / ".mrl-seed43.lock", "w") as handle:  # released when the holder died
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
