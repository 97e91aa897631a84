"""The quality gate: whether a newly exported model may replace the registry's champion."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and, in one sentence, why."""

    blessed: bool
    reason: str


def decide(
    test_accuracy: float,
    champion_accuracy: float | None,
    min_test_accuracy: float,
    max_accuracy_drop: float,
) -> Decision:
    """Bless a model that is accurate enough and not much worse than the champion.

    Args:
        test_accuracy: the new model's accuracy on the test split.
        champion_accuracy: the current champion's test accuracy, or None when there is no champion
            yet; then only the minimum applies.
        min_test_accuracy: the lowest test accuracy a champion may have.
        max_accuracy_drop: how far below the champion's accuracy the new model may be.

    Raises:
        ValueError: an accuracy or threshold outside [0, 1].
    """
    for name, value in (
        ("test_accuracy", test_accuracy),
        ("champion_accuracy", champion_accuracy),
        ("min_test_accuracy", min_test_accuracy),
        ("max_accuracy_drop", max_accuracy_drop),
    ):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{name} = {value!r} must be within [0, 1]")
    failures = []
    if test_accuracy < min_test_accuracy:
        failures.append(f"test accuracy {test_accuracy:.4f} is below the minimum {min_test_accuracy:.4f}")
    if champion_accuracy is not None and test_accuracy < champion_accuracy - max_accuracy_drop:
        failures.append(
            f"test accuracy {test_accuracy:.4f} is {champion_accuracy - test_accuracy:.4f} below the champion's "
            f"{champion_accuracy:.4f}, more than the allowed drop {max_accuracy_drop:.4f}"
        )
    if failures:
        return Decision(False, "; ".join(failures))
    if champion_accuracy is None:
        return Decision(
            True, f"test accuracy {test_accuracy:.4f} reaches the minimum {min_test_accuracy:.4f}; no champion yet"
        )
    return Decision(
        True,
        f"test accuracy {test_accuracy:.4f} reaches the minimum {min_test_accuracy:.4f} and is within "
        f"{max_accuracy_drop:.4f} of the champion's {champion_accuracy:.4f}",
    )
