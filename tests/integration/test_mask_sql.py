"""PostgreSQL writes the API's callback lists itself (callback_json): its masking of numbers must be numbers.mask,
for every length, or a list shows more of a number than the rule allows."""

from __future__ import annotations

import sqlalchemy as sa

from callback_queue.callback_json import _MASK
from callback_queue.numbers import mask


def test_sql_mask_is_numbers_mask(pg_database: str) -> None:
    numbers = ["", *("+8613812345678901"[:n] for n in range(1, 18)), *("13812345678"[:n] for n in range(1, 12)),
               "+865550101", "+12025550123", "+8613812345678", "+4420794600001234"]
    eng = sa.create_engine(pg_database)
    try:
        with eng.connect() as conn:
            got = {n: conn.execute(sa.text(f"SELECT {_MASK.format(c='CAST(:n AS text)')}"), {"n": n}).scalar_one()
                   for n in numbers}
    finally:
        eng.dispose()
    assert got == {n: mask(n) for n in numbers}
