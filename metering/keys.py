"""API key material: generation and hashing. Only the SHA-256 of a key is ever stored.

A key looks like `mk_<prefix>_<secret>`: the 8-character prefix is shown in the admin so a key
can be recognised, the 40-character secret carries ~240 bits of entropy, so a plain (unsalted)
SHA-256 is a sound verifier and lets a request find its key with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from typing import NamedTuple

KEY_PREFIX = "mk_"
_ALPHABET = string.ascii_letters + string.digits


class NewKey(NamedTuple):
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key() -> NewKey:
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(40))
    plaintext = f"{KEY_PREFIX}{prefix}_{secret}"
    return NewKey(plaintext=plaintext, prefix=prefix, key_hash=hash_key(plaintext))
