from __future__ import annotations

import pytest

from image_classification.tracking import gate


def test_first_model_needs_only_the_minimum() -> None:
    decision = gate.decide(0.97, None, min_test_accuracy=0.95, max_accuracy_drop=0.01)
    assert decision.blessed
    assert decision.reason == "test accuracy 0.9700 reaches the minimum 0.9500; no champion yet"


def test_first_model_below_the_minimum_is_not_blessed() -> None:
    decision = gate.decide(0.90, None, min_test_accuracy=0.95, max_accuracy_drop=0.01)
    assert not decision.blessed
    assert decision.reason == "test accuracy 0.9000 is below the minimum 0.9500"


def test_small_drop_against_the_champion_is_allowed() -> None:
    decision = gate.decide(0.975, 0.98, min_test_accuracy=0.95, max_accuracy_drop=0.01)
    assert decision.blessed
    assert "within 0.0100 of the champion's 0.9800" in decision.reason


def test_large_drop_against_the_champion_is_refused() -> None:
    decision = gate.decide(0.96, 0.98, min_test_accuracy=0.95, max_accuracy_drop=0.01)
    assert not decision.blessed
    assert decision.reason == (
        "test accuracy 0.9600 is 0.0200 below the champion's 0.9800, more than the allowed drop 0.0100"
    )


def test_both_failures_are_reported() -> None:
    decision = gate.decide(0.5, 0.98, min_test_accuracy=0.95, max_accuracy_drop=0.0)
    assert not decision.blessed
    assert decision.reason.count(";") == 1
    assert "below the minimum" in decision.reason
    assert "below the champion's" in decision.reason


def test_better_than_champion_is_blessed_even_with_zero_drop() -> None:
    assert gate.decide(0.99, 0.98, min_test_accuracy=0.0, max_accuracy_drop=0.0).blessed
    assert gate.decide(0.98, 0.98, min_test_accuracy=0.0, max_accuracy_drop=0.0).blessed


@pytest.mark.parametrize(
    ("test_accuracy", "champion_accuracy", "name"),
    [(1.2, None, "test_accuracy"), (0.9, -0.1, "champion_accuracy")],
)
def test_accuracy_outside_unit_interval_is_an_error(test_accuracy, champion_accuracy, name) -> None:
    with pytest.raises(ValueError, match=f"{name} = .* must be within"):
        gate.decide(test_accuracy, champion_accuracy, 0.5, 0.01)
