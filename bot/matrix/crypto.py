"""The cryptography of cross-signing and secret storage, as pure functions.

* Signed JSON (Matrix spec, "Signing JSON"): ed25519 over the canonical JSON of an object
  without its ``signatures`` and ``unsigned``; keys and signatures in unpadded base64.
* Cross-signing keys (spec, "Cross-signing"): ``{user_id, usage, keys: {"ed25519:<pub>": <pub>}}``.
* Secret storage (spec, "Secrets", ``m.secret_storage.v1.aes-hmac-sha2``): HKDF-SHA256 with 32
  zero bytes of salt and the secret's name as info gives an AES-256-CTR key and an HMAC-SHA256
  key; the key's own description carries the encryption of 32 zero bytes under the name "".
* Recovery keys (spec, "Key representation"): 0x8B 0x01, the 32 key bytes and a parity byte,
  in base58 (Bitcoin's alphabet), grouped by four characters.

nio has no cross-signing (matrix-nio #229), so these are ours; ``cryptography`` does the
primitives. tests/test_crypto.py checks them against values matrix-js-sdk produced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.errors import MatrixError

SSSS_ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"
RECOVERY_KEY_PREFIX = b"\x8b\x01"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class CryptoError(MatrixError):
    """Bad key material: a wrong recovery key, a MAC that does not match, a malformed key."""


# ---------------------------------------------------------------------- encodings


def b64encode(data: bytes) -> str:
    """Unpadded base64, as Matrix writes keys and signatures."""
    return base64.b64encode(data).decode().rstrip("=")


def b64decode(text: str) -> bytes:
    """Padded or unpadded base64 (secret storage writers differ)."""
    if not isinstance(text, str):
        raise CryptoError("expected a base64 string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, TypeError) as e:
        raise CryptoError("malformed base64") from e


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode()


# ---------------------------------------------------------------------- signatures


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An ed25519 key pair from its 32-byte seed (the form secret storage keeps)."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise CryptoError("an ed25519 seed has 32 bytes")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @property
    def public(self) -> str:
        key = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return b64encode(key.public_bytes_raw())

    def sign(self, message: bytes) -> str:
        return b64encode(Ed25519PrivateKey.from_private_bytes(self.seed).sign(message))

    def __repr__(self) -> str:  # never the seed
        return f"SigningKey(public={self.public})"


def signable(obj: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def sign_json(obj: dict[str, Any], user_id: str, key_id: str, key: SigningKey) -> dict[str, Any]:
    """A copy of ``obj`` with our signature added under ``user_id`` / ``ed25519:<key_id>``."""
    signature = key.sign(signable(obj))
    signatures = {u: dict(s) for u, s in (obj.get("signatures") or {}).items()}
    signatures.setdefault(user_id, {})[f"ed25519:{key_id}"] = signature
    return {**obj, "signatures": signatures}


def verify_json(obj: Any, user_id: str, key_id: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature by ``public_key`` under that user and key id."""
    try:
        signature = obj["signatures"][user_id][f"ed25519:{key_id}"]
        key = Ed25519PublicKey.from_public_bytes(b64decode(public_key))
        key.verify(b64decode(signature), signable(obj))
        return True
    except (InvalidSignature, CryptoError, KeyError, TypeError, ValueError, AttributeError):
        return False


def cross_signing_key(user_id: str, usage: str, key: SigningKey) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{key.public}": key.public}}


def cross_signing_public(obj: Any, user_id: str, usage: str) -> str | None:
    """The public key of a cross-signing key object of that user and usage, or None."""
    if not isinstance(obj, dict) or obj.get("user_id") != user_id:
        return None
    if not isinstance(obj.get("usage"), list) or usage not in obj["usage"]:
        return None
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"ed25519:{public}":
        return None
    return public


# ---------------------------------------------------------------------- recovery keys


def _base58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _BASE58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _base58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _BASE58.find(ch)
        if i < 0:
            raise CryptoError("a recovery key has only base58 characters")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def encode_recovery_key(key: bytes) -> str:
    raw = RECOVERY_KEY_PREFIX + key
    parity = 0
    for b in raw:
        parity ^= b
    text = _base58encode(raw + bytes([parity]))
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def decode_recovery_key(text: str) -> bytes:
    """The 32-byte secret storage key; CryptoError says what is wrong with the text."""
    raw = _base58decode("".join(text.split()))
    if len(raw) != 35 or raw[:2] != RECOVERY_KEY_PREFIX:
        raise CryptoError("this is not a recovery key (wrong length or prefix)")
    parity = 0
    for b in raw:
        parity ^= b
    if parity:
        raise CryptoError("this recovery key has a typo (its parity check fails)")
    return raw[2:34]


# ---------------------------------------------------------------------- secret storage


def _derive(key: bytes, name: str) -> tuple[bytes, bytes]:
    out = HKDF(algorithm=hashes.SHA256(), length=64, salt=b"\0" * 32, info=name.encode()).derive(
        key
    )
    return out[:32], out[32:]


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    # CTR is its own inverse: the same call encrypts and decrypts.
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def encrypt_secret(key: bytes, name: str, secret: str, iv: bytes | None = None) -> dict[str, str]:
    """``{iv, ciphertext, mac}`` of a secret (a string) under a secret storage key."""
    aes_key, mac_key = _derive(key, name)
    if iv is None:
        fresh = bytearray(os.urandom(16))
        fresh[8] &= 0x7F  # the spec clears bit 63, so the 64-bit counter never wraps (js too)
        iv = bytes(fresh)
    ciphertext = _aes_ctr(aes_key, iv, secret.encode())
    mac = hmac.new(mac_key, ciphertext, hashlib.sha256).digest()
    # Padded base64 here, as matrix-js-sdk writes it (its encodeBase64).
    return {
        "iv": base64.b64encode(iv).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "mac": base64.b64encode(mac).decode(),
    }


def decrypt_secret(key: bytes, name: str, encrypted: Any) -> str:
    """The secret; CryptoError when the MAC does not match (wrong key) or the data is bad."""
    if not isinstance(encrypted, dict):
        raise CryptoError(f"secret {name} is malformed")
    aes_key, mac_key = _derive(key, name)
    iv = b64decode(encrypted.get("iv", ""))
    ciphertext = b64decode(encrypted.get("ciphertext", ""))
    mac = b64decode(encrypted.get("mac", ""))
    if len(iv) != 16:
        raise CryptoError(f"secret {name} is malformed")
    expected = hmac.new(mac_key, ciphertext, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise CryptoError(f"secret {name} does not decrypt with this key (MAC mismatch)")
    try:
        return _aes_ctr(aes_key, iv, ciphertext).decode()
    except UnicodeDecodeError as e:
        raise CryptoError(f"secret {name} is not text") from e


def key_description(key: bytes) -> dict[str, str]:
    """The ``m.secret_storage.key.<id>`` content for a new key (lets a reader check the key)."""
    check = encrypt_secret(key, "", "\0" * 32)
    return {"algorithm": SSSS_ALGORITHM, "iv": check["iv"], "mac": check["mac"]}


def check_key(key: bytes, description: Any) -> None:
    """Raise CryptoError unless ``key`` is the one that ``description`` was made for."""
    if not isinstance(description, dict) or description.get("algorithm") != SSSS_ALGORITHM:
        raise CryptoError(f"the secret storage key is not {SSSS_ALGORITHM}")
    if "iv" not in description or "mac" not in description:
        return  # old descriptions carry no check; the secrets' own MACs will tell
    expected = encrypt_secret(key, "", "\0" * 32, iv=b64decode(description["iv"]))
    if not hmac.compare_digest(b64decode(description["mac"]), b64decode(expected["mac"])):
        raise CryptoError("the recovery key does not match this account's secret storage")
