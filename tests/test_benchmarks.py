"""The benchmark scripts run and record what they compared (no timing is asserted: those are numbers for a reader)."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT

MODEL_THROUGHPUT = [sys.executable, str(PROJECT_ROOT / "benchmarks" / "model_throughput.py")]


def test_model_throughput_times_every_head_and_memory_format_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(MODEL_THROUGHPUT + [
        "--backbone", "torchvision/resnet18", "--num-classes", "10", "--image-size", "32", "--batch-size", "4",
        "--warmup", "1", "--steps", "1", "--repeats", "2", "--heads", "mrl,ff",
        "--memory-formats", "contiguous,channels_last", "--clock", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    names = ["mrl", "mrl channels_last", "ff", "ff channels_last"]
    assert list(record["images_per_s"]) == names
    assert all(len(record["images_per_s"][n]) == 2 and min(record["images_per_s"][n]) > 0 for n in names)
    assert "CPU time of this process" in proc.stdout
    assert "x ff)" in proc.stdout  # ratios against FF eager in the first memory format


@pytest.mark.parametrize("args, message", [
    (["--memory-formats", "nhwc"], "--memory-formats: unknown ['nhwc']; choose from contiguous, channels_last"),
    (["--heads", "mrl,big"], "--heads: unknown ['big']"),
])
def test_model_throughput_rejects_a_bad_argument_before_building_anything(args, message):
    proc = subprocess.run(MODEL_THROUGHPUT + args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
