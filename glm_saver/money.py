"""Dollar amounts as people read them, at any size: budgets and spends here run from whole dollars
down to fractions of a cent (one small Cerebras answer costs $0.00006), so a fixed number of
decimals either hides a small amount ($0.0002 as "$0.00") or pads a large one."""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 4
MAX_DECIMALS = 8  # a millionth of a cent: float residue below it (a saving of 1e-20) reads $0.00


def usd(amount: float) -> str:
    """Cents at least ($1.00, $1,234.57), else four significant digits ($0.0002, $0.001235), never
    an exponent. The dashboard's `usd` (dashboard.js) follows the same rule."""
    if not math.isfinite(amount):
        return f"${amount}"
    size = abs(amount)
    decimals = 2 if size == 0 else min(MAX_DECIMALS, max(2, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(size))))
    whole, _, fraction = f"{size:,.{decimals}f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    sign = "-" if amount < 0 and (whole + fraction).strip("0,") else ""
    return f"{sign}${whole}.{fraction}"
