"""Dollar amounts read at any size: small budgets and spends keep their digits, large ones their cents."""

from __future__ import annotations

import pytest

from glm_saver.money import usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0.0002, "$0.0002"),  # a tiny budget is not "$0.00"
        (0.00006, "$0.00006"),
        (0.000123456, "$0.0001235"),  # four significant digits
        (0.3, "$0.30"),  # cents at least
        (0.0, "$0.00"),
        (1.0, "$1.00"),
        (1.0004, "$1.00"),
        (1234.5678, "$1,234.57"),
        (2.25e-6, "$0.00000225"),  # a per-token price, no exponent
        (-0.0042, "-$0.0042"),  # a negative saving
        (2.7e-20, "$0.00"),  # float residue of a subtraction
        (-1e-20, "$0.00"),
    ],
)
def test_amounts_are_readable_at_any_size(amount: float, shown: str) -> None:
    assert usd(amount) == shown
