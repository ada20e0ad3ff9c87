"""The 2^32 sweep (marked exhaustive: nox -s exhaustive), and one chunk of it in the CPU suite."""

import pytest

from .exhaustive import check_chunk, run


def test_one_chunk_around_one_point_zero():
    # 2^20 consecutive patterns starting at 1.0: every rounding boundary of the top binades.
    assert check_chunk(0x3F800000, 1 << 20) == []


def test_lowest_chunk_subnormals_and_zero():
    assert check_chunk(0, 1 << 20) == []


@pytest.mark.exhaustive
def test_all_fp32_patterns():
    assert run() == []
