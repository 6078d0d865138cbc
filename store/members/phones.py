"""Phone numbers: normalise, hash for lookup, encrypt for touch channels, mask for display.

The plain number is never stored. The keyed hash (HMAC-SHA256) unifies identities across
channels and brands without being reversible by anyone who lacks the secret; the AES-GCM copy is
for channels that must dial or text the member.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_SEPARATORS = re.compile(r"[\s\-()]")
_MAINLAND_MOBILE = re.compile(r"1[3-9]\d{9}")
_NONCE_BYTES = 12


class InvalidPhone(ValueError):
    """The text is not a mainland China mobile number."""


def normalise(raw: str) -> str:
    """Return the 11-digit mobile number, accepting spaces, dashes and a +86 / 0086 prefix."""
    digits = _SEPARATORS.sub("", raw.strip())
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11:
            digits = digits[len(prefix) :]
            break
    if not _MAINLAND_MOBILE.fullmatch(digits):
        raise InvalidPhone(
            "expected a mainland China mobile number: 11 digits starting with 13-19, optionally after +86"
        )
    return digits


def mask(number: str) -> str:
    """``13812345678`` → ``138****5678``."""
    return f"{number[:3]}****{number[-4:]}"


@dataclass(frozen=True, slots=True)
class PhoneForms:
    hash: bytes
    encrypted: bytes
    masked: str


class PhoneVault:
    """Derives the hash key and the encryption key from one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the phone secret must be at least 16 bytes")
        self._hash_key = hmac.digest(secret, b"omnimember/phone-hash/v1", hashlib.sha256)
        self._aead = AESGCM(hmac.digest(secret, b"omnimember/phone-encryption/v1", hashlib.sha256))

    def hash(self, number: str) -> bytes:
        return hmac.digest(self._hash_key, number.encode(), hashlib.sha256)

    def encrypt(self, number: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, number.encode(), None)

    def decrypt(self, blob: bytes) -> str:
        return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None).decode()

    def forms(self, raw: str) -> PhoneForms:
        """Normalise ``raw`` and return what is stored; raises InvalidPhone."""
        number = normalise(raw)
        return PhoneForms(self.hash(number), self.encrypt(number), mask(number))
