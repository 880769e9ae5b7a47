"""Nesting sizes and loss weights: defaults and validation."""

from __future__ import annotations

import warnings

import pytest

from mrl.errors import ConfigError
from mrl.nesting import auto_nesting_dims, resolve_loss_weights, resolve_nesting_dims


@pytest.mark.parametrize("width, expected", [
    (2048, [8, 16, 32, 64, 128, 256, 512, 1024, 2048]),
    (768, [12, 24, 48, 96, 192, 384, 768]),
    (512, [8, 16, 32, 64, 128, 256, 512]),
])
def test_auto_nesting_dims(width, expected):
    assert auto_nesting_dims(width) == expected
    assert resolve_nesting_dims("auto", width) == expected
    assert resolve_nesting_dims(None, width) == expected


def test_auto_nesting_dims_small_or_odd_width_is_just_the_width():
    assert auto_nesting_dims(7) == [7]
    assert auto_nesting_dims(12) == [12]
    assert auto_nesting_dims(16) == [8, 16]


def test_auto_nesting_dims_rejects_nonpositive_width():
    with pytest.raises(ConfigError, match="model.nesting_dims"):
        auto_nesting_dims(0)


def test_valid_list_is_returned_as_list():
    assert resolve_nesting_dims((8, 16, 32), 32) == [8, 16, 32]
    assert resolve_nesting_dims([32], 32) == [32]


@pytest.mark.parametrize("spec, hints", [
    ([16, 8, 32], ["strictly increasing", "sort it: [8, 16, 32]"]),
    ([8, 8, 16, 32], ["duplicate", "list each size once"]),
    ([0, 8, 32], ["positive", "remove zero and negative sizes"]),
    ([-8, 16, 32], ["positive", "remove zero and negative sizes"]),
    ([8, 16, 64], ["larger than", "width 32", "use sizes <= 32"]),
    ([], ["is empty", "'auto'"]),
    ([8, 16.0, 32], ["must be ints", "16.0"]),
    ([8, "16", 32], ["must be ints", "'16'"]),
    ([True, 8, 32], ["must be ints"]),
    ("8,16,32", ["expected 'auto' or a list of ints", "model.nesting_dims=[8,16,32]"]),
    (32, ["expected 'auto' or a list of ints"]),
], ids=["unsorted", "duplicated", "zero", "negative", "too_large", "empty", "float", "str_item", "bool",
        "string", "scalar"])
def test_bad_nesting_dims_raise_config_error(spec, hints):
    with pytest.raises(ConfigError) as err:
        resolve_nesting_dims(spec, 32)
    message = str(err.value)
    assert err.value.field == "model.nesting_dims"
    assert message.startswith("model.nesting_dims: ")
    assert "\n" not in message
    for hint in hints:
        assert hint in message, f"{hint!r} not in {message!r}"


def test_warns_when_width_missing_from_list():
    with pytest.warns(UserWarning, match="does not include the full embedding width 32"):
        assert resolve_nesting_dims([8, 16], 32) == [8, 16]


def test_no_warning_when_width_included():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_nesting_dims([8, 16, 32], 32) == [8, 16, 32]


def test_loss_weights_default_and_valid():
    assert resolve_loss_weights(None, [8, 16, 32]) == [1.0, 1.0, 1.0]
    assert resolve_loss_weights([1, 0, 2.5], [8, 16, 32]) == [1.0, 0.0, 2.5]
    assert all(isinstance(w, float) for w in resolve_loss_weights((1, 2, 3), [8, 16, 32]))


@pytest.mark.parametrize("weights, hints", [
    ([1.0, 1.0], ["has 2 values", "3 sizes", "one weight per size"]),
    ([1.0, 1.0, 1.0, 1.0], ["has 4 values"]),
    ([1.0, -0.5, 1.0], [">= 0", "-0.5"]),
    ([0.0, 0.0, 0.0], ["all weights are zero", "at least one positive weight"]),
    ("1,1,1", ["expected a list of numbers"]),
], ids=["too_short", "too_long", "negative", "all_zero", "string"])
def test_bad_loss_weights_raise_config_error(weights, hints):
    with pytest.raises(ConfigError) as err:
        resolve_loss_weights(weights, [8, 16, 32])
    message = str(err.value)
    assert err.value.field == "model.loss_weights"
    assert message.startswith("model.loss_weights: ")
    for hint in hints:
        assert hint in message, f"{hint!r} not in {message!r}"
