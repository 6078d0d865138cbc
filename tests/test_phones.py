"""Phone normalisation, hashing, encryption and masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.members.phones import InvalidPhone, PhoneVault, mask, normalise

mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)


@pytest.mark.parametrize(
    "raw",
    ["13812345678", "+8613812345678", "+86 138 1234 5678", "0086-138-1234-5678", "8613812345678", " (138)12345678 "],
)
def test_mainland_mobiles_normalise_to_eleven_digits(raw: str) -> None:
    assert normalise(raw) == "13812345678"


@pytest.mark.parametrize(
    "raw", ["", "1381234567", "138123456789", "12812345678", "+1 415 555 0100", "1381234567x", "+8612812345678"]
)
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(InvalidPhone, match="mainland China mobile"):
        normalise(raw)


def test_mask_keeps_prefix_and_last_four() -> None:
    assert mask("13812345678") == "138****5678"


@given(mobiles)
def test_encryption_round_trips_and_hash_is_stable(number: str) -> None:
    vault = PhoneVault(b"k" * 32)
    assert vault.decrypt(vault.encrypt(number)) == number
    assert vault.hash(number) == PhoneVault(b"k" * 32).hash(number)
    assert vault.hash(number) != PhoneVault(b"j" * 32).hash(number)


def test_ciphertexts_differ_per_call_so_equal_numbers_do_not_show() -> None:
    vault = PhoneVault(b"k" * 32)
    assert vault.encrypt("13812345678") != vault.encrypt("13812345678")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PhoneVault(b"short")
