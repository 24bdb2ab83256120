"""Cross-signing and secret-storage cryptography (bot.matrix.crypto).

The recovery key, key check and encrypted secret below were produced by matrix-js-sdk 43.0.0
itself (``encodeRecoveryKey``, ``calculateKeyCheck``, ``encryptAESSecretStorageItem``) for
the key bytes ``i * 7 + 1`` and the IV ``00 01 .. 0f``; the signature tests check against
vodozemac (nio's Olm.verify_json), an independent implementation.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nio.crypto.olm_machine import Olm

from bot.matrix import crypto
from bot.matrix.crypto import CryptoError, SigningKey

KEY = bytes((i * 7 + 1) & 0xFF for i in range(32))
IV = "AAECAwQFBgcICQoLDA0ODw"
JS_RECOVERY_KEY = "EsT1 HT7u 2D8e RJ5J Xpm5 QiQG RLzx hTZJ mA5Y F4nN CHD4 4593"
JS_KEY_CHECK_MAC = "tNnZ7RWFV912Ab7nGv8Dhl3SGkSM7/BSzBDz4lRDOeQ="
JS_SECRET = {
    "iv": "AAECAwQFBgcICQoLDA0ODw==",
    "ciphertext": "S1w1gEo9/ZMoPr6DkeNPr5um5y/7Ppem",
    "mac": "vez+kq63FMBgu8atVuru5o5B2kSFaXB7Q8r37vbI/Yc=",
}
JS_SECRET_NAME = "m.cross_signing.self_signing"
JS_SECRET_PLAIN = "c2VjcmV0IHNlZWQgYmFzZTY0"
USER = "@bot:example.org"


def test_recovery_key_encodes_and_decodes_as_js_does() -> None:
    assert crypto.encode_recovery_key(KEY) == JS_RECOVERY_KEY
    assert crypto.decode_recovery_key(JS_RECOVERY_KEY) == KEY
    assert crypto.decode_recovery_key(JS_RECOVERY_KEY.replace(" ", "")) == KEY


def test_a_recovery_key_with_a_typo_is_refused_with_a_reason() -> None:
    typo = JS_RECOVERY_KEY.replace("EsT1", "EsT2")
    with pytest.raises(CryptoError, match=r"parity|prefix"):
        crypto.decode_recovery_key(typo)
    with pytest.raises(CryptoError, match="base58"):
        crypto.decode_recovery_key("0OIl" + JS_RECOVERY_KEY[4:])
    with pytest.raises(CryptoError, match="not a recovery key"):
        crypto.decode_recovery_key("EsT1 HT7u")


@given(st.binary(min_size=32, max_size=32))
def test_any_key_round_trips_through_a_recovery_key(key: bytes) -> None:
    assert crypto.decode_recovery_key(crypto.encode_recovery_key(key)) == key


def test_secrets_encrypt_and_decrypt_as_js_does() -> None:
    iv = crypto.b64decode(IV)
    assert crypto.encrypt_secret(KEY, JS_SECRET_NAME, JS_SECRET_PLAIN, iv=iv) == JS_SECRET
    assert crypto.decrypt_secret(KEY, JS_SECRET_NAME, JS_SECRET) == JS_SECRET_PLAIN
    check = crypto.encrypt_secret(KEY, "", "\0" * 32, iv=iv)
    assert check["mac"] == JS_KEY_CHECK_MAC
    crypto.check_key(KEY, {"algorithm": crypto.SSSS_ALGORITHM, "iv": IV, "mac": check["mac"]})


def test_a_wrong_key_or_name_does_not_decrypt() -> None:
    other = bytes(32)
    with pytest.raises(CryptoError, match="MAC mismatch"):
        crypto.decrypt_secret(other, JS_SECRET_NAME, JS_SECRET)
    with pytest.raises(CryptoError, match="MAC mismatch"):
        crypto.decrypt_secret(KEY, "m.cross_signing.master", JS_SECRET)
    with pytest.raises(CryptoError, match="does not match"):
        crypto.check_key(other, crypto.key_description(KEY))
    with pytest.raises(CryptoError, match="malformed"):
        crypto.decrypt_secret(KEY, JS_SECRET_NAME, {"iv": "!", "ciphertext": "", "mac": ""})


def test_new_ivs_clear_bit_63_and_differ() -> None:
    ivs = {crypto.encrypt_secret(KEY, "n", "s")["iv"] for _ in range(20)}
    assert len(ivs) == 20
    assert all(crypto.b64decode(iv)[8] & 0x80 == 0 for iv in ivs)


def test_a_signature_verifies_with_vodozemac_and_fails_when_anything_changes() -> None:
    key = SigningKey.generate()
    obj = {"user_id": USER, "keys": {"a": "b"}, "unsigned": {"x": 1}}
    signed = crypto.sign_json(obj, USER, key.public, key)
    assert "signatures" not in obj  # a copy
    olm = Olm.__new__(Olm)  # verify_json uses no state
    assert olm.verify_json(dict(signed), key.public, USER, key.public)
    assert crypto.verify_json(signed, USER, key.public, key.public)
    assert crypto.verify_json({**signed, "unsigned": {"y": 2}}, USER, key.public, key.public)
    assert not crypto.verify_json({**signed, "keys": {"a": "c"}}, USER, key.public, key.public)
    other = SigningKey.generate()
    assert not crypto.verify_json(signed, USER, key.public, other.public)
    assert not crypto.verify_json(signed, "@eve:example.org", key.public, key.public)
    assert not crypto.verify_json({"signatures": "odd"}, USER, key.public, key.public)


def test_a_second_signature_keeps_the_first() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    obj = crypto.sign_json({"k": 1}, USER, "A", a)
    obj = crypto.sign_json(obj, USER, "B", b)
    assert crypto.verify_json(obj, USER, "A", a.public)
    assert crypto.verify_json(obj, USER, "B", b.public)


def test_cross_signing_key_objects() -> None:
    key = SigningKey.generate()
    obj = crypto.cross_signing_key(USER, "self_signing", key)
    assert crypto.cross_signing_public(obj, USER, "self_signing") == key.public
    assert crypto.cross_signing_public(obj, USER, "master") is None
    assert crypto.cross_signing_public(obj, "@eve:example.org", "self_signing") is None
    bad = {**obj, "keys": {"ed25519:other": key.public}}
    assert crypto.cross_signing_public(bad, USER, "self_signing") is None


def test_a_signing_key_never_shows_its_seed() -> None:
    key = SigningKey(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(key)
    assert crypto.b64encode(bytes(range(32))) not in repr(key)
    with pytest.raises(CryptoError):
        SigningKey(b"short")
