"""E.164 normalization: the learnt shape rules must agree with phonenumbers."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callback_queue.numbers import Normalizer, NumberRules, mask, normalizer_from


def reference(raw: str, region: str) -> str | None:
    try:
        return phonenumbers.format_number(phonenumbers.parse(raw, region), phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        return None


@pytest.mark.parametrize(("raw", "expected"), [
    ("13812345678", "+8613812345678"),       # mobile
    ("01062345678", "+861062345678"),        # Beijing landline, national prefix 0 dropped
    ("+8613812345678", "+8613812345678"),
    ("008613812345678", "+8613812345678"),   # international prefix
    ("138 1234 5678", "+8613812345678"),
    ("anonymous", None), ("", None), ("<unknown>", None),
    ("1000", None), ("8001", None),          # internal extensions
])
def test_cn_examples(raw, expected):
    assert normalizer_from("CN", 5, [], []).normalize(raw) == expected


def test_ignore_lists_and_patterns():
    n = normalizer_from("CN", 5, ["13800000000"], [r"^0?400"])
    assert n.normalize("13800000000") is None
    assert n.normalize("4008123123") is None
    assert n.normalize("13800000001") == "+8613800000001"
    assert n.why_ignored("13800000000") == "ignored"
    assert n.why_ignored("1000") == "internal"
    assert n.why_ignored("13800000001") is None


def valid_numbers(region: str, seed: int, count: int) -> list[str]:
    """National-format numbers phonenumbers calls valid, from the region's own example patterns."""
    import random

    rng = random.Random(seed)
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    out: list[str] = []
    for desc in (meta.mobile, meta.fixed_line, meta.toll_free):
        if desc is None or desc.example_number is None:
            continue
        ex = desc.example_number
        tries = 0
        while len(out) < count * 3 and tries < count * 40:
            tries += 1
            # mutate the example's tail: keeps the number plan's leading digits
            keep = rng.randint(2, max(2, len(ex) - 3))
            cand = ex[:keep] + "".join(rng.choice("0123456789") for _ in range(len(ex) - keep))
            num = phonenumbers.parse(cand, region)
            if phonenumbers.is_valid_number(num):
                out.append(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)
                           .replace(" ", "").replace("-", "").replace("(", "").replace(")", ""))
    return out


@pytest.mark.parametrize("region", ["CN", "US", "GB", "DE", "IN", "FR", "JP", "BR", "AR", "MX", "IT", "RU"])
def test_valid_numbers_agree_with_phonenumbers(region):
    numbers = valid_numbers(region, seed=7, count=300)
    assert len(numbers) > 100
    n = Normalizer(NumberRules(default_region=region, internal_max_digits=3))
    for raw in numbers:
        assert n.normalize(raw) == reference(raw, region), raw


@settings(max_examples=200, deadline=None)
@given(st.lists(st.from_regex(r"\A[0-9]{6,16}\Z", fullmatch=True), min_size=2, max_size=40), st.randoms())
def test_result_does_not_depend_on_order(numbers, rnd):
    a = Normalizer(NumberRules(default_region="CN"))
    b = Normalizer(NumberRules(default_region="CN"))
    first = {x: a.normalize(x) for x in numbers}
    shuffled = list(numbers)
    rnd.shuffle(shuffled)
    assert {x: b.normalize(x) for x in shuffled} == first


def test_ip_dialling_prefix_is_kept_as_presented():
    # phonenumbers reads 179xx as an exit code here ("+8443"); the caller presented a CN number
    assert reference("17978008443", "CN") == "+8443"
    assert normalizer_from("CN", 5, [], []).normalize("17978008443") == "+8617978008443"


@pytest.mark.parametrize(("number", "masked"), [
    ("+8613812345678", "+86138****5678"),    # the form the docs show
    ("+12025550123", "+120****0123"),        # 12 characters: 4 hidden, not 2
    ("+865550101", "+865****01"),            # 7-11 characters: shown with a 2-character tail, not in full
    ("+1234567", "+1****67"),
    ("1234567", "1****67"),
    ("+123456", "+****56"),
    ("123456", "******"),                    # 6 or fewer: all starred
    ("+1", "**"),
    ("+44207123451234", "+44207*****1234"),
])
def test_mask(number, masked):
    assert mask(number) == masked


def test_mask_of_nothing():
    assert mask(None) == "-" and mask("") == "-"
    assert "12345" not in mask("+861234567890")


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"\A\+?[0-9]{1,18}\Z", fullmatch=True))
def test_mask_never_shows_more_than_head_and_tail(number):
    masked = mask(number)
    n = len(number)
    assert len(masked) == n
    stars = masked.count("*")
    assert stars >= min(4, n)                          # at least 4 hidden (all of a short number)
    if n <= 6:
        assert masked == "*" * n
        return
    # one run of stars between a head of the number and a tail of it
    head = masked.index("*")
    tail = n - head - stars
    assert masked == number[:head] + "*" * stars + (number[-tail:] if tail else "")
    assert head <= 6
    assert tail <= (4 if n >= 12 else 2)
