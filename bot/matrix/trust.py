"""Which devices their owner cross-signed, and whose identity changed (MSC4153).

Element's "exclude insecure devices" mode, which the bot follows by default
(``matrix.exclude_insecure_devices``): room keys go only to devices signed by their owner's
self-signing key (itself signed by the owner's master key), and commands and media keys are
accepted only from such devices. A user's master key is pinned the first time the bot sees
it; a new one is reported once (``identity_changed``) and pinned in its place.

nio reads ``/keys/query`` but throws away the cross-signing keys and the devices'
signatures. ``install()`` keeps the raw answer and hands it to the client's ``DeviceTrust``
before nio's own handling, and makes nio treat insecure devices as blacklisted when it
shares room keys. Both are private nio internals, checked at install like bot.matrix.todevice.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio.crypto import OlmDevice
from nio.crypto.olm_machine import Olm
from nio.responses import KeysQueryResponse

from bot.errors import IncompatibleDependency
from bot.files import write_private_json
from bot.log import context
from bot.matrix.crypto import cross_signing_public, verify_json
from bot.signals import Signal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityChanged:
    user_id: str
    old_master: str
    new_master: str


@dataclass
class _UserKeys:
    master: str | None = None
    self_signing: str | None = None
    #: device id → the ed25519 key of the device payload the self-signing key signed
    signed: dict[str, str] = field(default_factory=dict)


class DeviceTrust:
    """Cross-signing state of the users the bot shares rooms with, from their key queries."""

    def __init__(self, pins_file: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pins_file = pins_file
        self._pins: dict[str, str] = {}
        self._users: dict[str, _UserKeys] = {}
        self.identity_changed: Signal[IdentityChanged] = Signal("identity_changed")
        #: (user, device) newly seen as cross-signed: nio must share room keys with it again
        self.device_trusted: Signal[tuple[str, str]] = Signal("device_trusted")

    def load(self) -> None:
        """Read the pinned identities (at start: construction does no I/O)."""
        self._pins = _load_pins(self._pins_file)

    # ------------------------------------------------------------------ questions

    def is_cross_signed(self, user_id: str, device_id: str, ed25519: str | None = None) -> bool:
        """Signed by the owner's current self-signing key (and, given, with that ed25519 key)."""
        signed = self._users.get(user_id)
        key = signed.signed.get(device_id) if signed else None
        return key is not None and (ed25519 is None or key == ed25519)

    def allows(self, user_id: str, device_id: str, ed25519: str | None = None) -> bool:
        """The policy: every device when it is off, else only cross-signed ones."""
        return not self.enabled or self.is_cross_signed(user_id, device_id, ed25519)

    def master_key(self, user_id: str) -> str | None:
        return self._pins.get(user_id)

    def known(self, user_id: str) -> bool:
        """Whether a key query for this user has been seen."""
        return user_id in self._users

    # ------------------------------------------------------------------ updates

    def update(self, answer: Any) -> None:
        """A ``/keys/query`` answer (never raises: it is attacker-influenced data)."""
        if not isinstance(answer, dict) or not isinstance(answer.get("device_keys"), dict):
            return
        masters = m if isinstance(m := answer.get("master_keys"), dict) else {}
        ssks = s if isinstance(s := answer.get("self_signing_keys"), dict) else {}
        for user_id, devices in answer["device_keys"].items():
            if isinstance(user_id, str):
                self._update_user(user_id, devices, masters.get(user_id), ssks.get(user_id))

    def _update_user(self, user_id: str, devices: Any, master_obj: Any, ssk_obj: Any) -> None:
        master = cross_signing_public(master_obj, user_id, "master")
        ssk = cross_signing_public(ssk_obj, user_id, "self_signing")
        if ssk is not None and (
            master is None or not verify_json(ssk_obj, user_id, master, master)
        ):
            ssk = None  # a self-signing key the master key did not sign is worthless
        new = _UserKeys(master, ssk)
        if ssk is not None and isinstance(devices, dict):
            for device_id, payload in devices.items():
                ed25519 = _signed_device_key(user_id, device_id, payload, ssk)
                if ed25519 is not None:
                    new.signed[device_id] = ed25519
        old = self._users.get(user_id)
        self._users[user_id] = new
        if master is not None:
            self._pin(user_id, master)
        for device_id in new.signed:
            if old is None or device_id not in old.signed:
                self.device_trusted.emit((user_id, device_id))

    def _pin(self, user_id: str, master: str) -> None:
        pinned = self._pins.get(user_id)
        if pinned == master:
            return
        self._pins[user_id] = master
        try:
            write_private_json(self._pins_file, self._pins)
        except OSError:
            log.exception("could not save the pinned identities to %s", self._pins_file)
        if pinned is not None:
            log.warning(
                "the cryptographic identity of %s changed", user_id, extra=context(user=user_id)
            )
            self.identity_changed.emit(IdentityChanged(user_id, pinned, master))


def _signed_device_key(user_id: str, device_id: Any, payload: Any, ssk: str) -> str | None:
    """The device's ed25519 key if the payload is self-signed and signed by ``ssk``."""
    if not isinstance(device_id, str) or not isinstance(payload, dict):
        return None
    if payload.get("user_id") != user_id or payload.get("device_id") != device_id:
        return None
    keys = payload.get("keys")
    ed25519 = keys.get(f"ed25519:{device_id}") if isinstance(keys, dict) else None
    if not isinstance(ed25519, str):
        return None
    if not verify_json(payload, user_id, device_id, ed25519):
        return None
    return ed25519 if verify_json(payload, user_id, ssk, ssk) else None


def _load_pins(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        # Forgetting pins would accept a swapped identity silently: refuse to start instead.
        raise IncompatibleDependency(f"cannot read the pinned identities in {path}: {e}") from e
    if not isinstance(data, dict):
        raise IncompatibleDependency(f"{path} is not a JSON object")
    return {u: k for u, k in data.items() if isinstance(u, str) and isinstance(k, str)}


# ---------------------------------------------------------------------- the nio patch


#: the private nio parts we wrap, with the parameters we rely on
_NIO_INTERNALS = {
    "_handle_key_query": ["self", "response"],
    "is_device_blacklisted": ["self", "device"],
}
_installed = False


def check_nio_internals() -> None:
    problems = [
        f"Olm.{name}({', '.join(params)}) changed"
        for name, params in _NIO_INTERNALS.items()
        if getattr(Olm, name, None) is None
        or list(inspect.signature(getattr(Olm, name)).parameters) != params
    ]
    if not isinstance(inspect.getattr_static(KeysQueryResponse, "from_dict"), classmethod):
        problems.append("KeysQueryResponse.from_dict is no longer a classmethod")
    if problems:
        raise IncompatibleDependency("matrix-nio changed: " + "; ".join(problems))


def attach(olm: Olm, trust: DeviceTrust) -> None:
    """Make this Olm machine feed and obey ``trust``."""
    olm.callbot_trust = trust


def install() -> None:
    """Patch nio once per process (a no-op for Olm machines without ``attach``)."""
    global _installed
    if _installed:
        return
    check_nio_internals()
    from_dict = KeysQueryResponse.from_dict.__func__

    def keep_raw(cls: type, parsed_dict: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        response = from_dict(cls, parsed_dict, *args, **kwargs)
        if isinstance(response, KeysQueryResponse):
            response.callbot_raw = parsed_dict
        return response

    KeysQueryResponse.from_dict = classmethod(keep_raw)

    handle = Olm._handle_key_query

    @functools.wraps(handle)
    def _handle_key_query(self: Olm, response: KeysQueryResponse) -> None:
        trust = getattr(self, "callbot_trust", None)
        if trust is not None:
            try:
                trust.update(getattr(response, "callbot_raw", None))
            except Exception:
                log.exception("could not read the cross-signing keys of a key query")
        handle(self, response)

    blacklisted = Olm.is_device_blacklisted

    @functools.wraps(blacklisted)
    def is_device_blacklisted(self: Olm, device: OlmDevice) -> bool:
        if blacklisted(self, device):
            return True
        trust = getattr(self, "callbot_trust", None)
        return trust is not None and not trust.allows(device.user_id, device.id, device.ed25519)

    Olm._handle_key_query = _handle_key_query
    Olm.is_device_blacklisted = is_device_blacklisted
    _installed = True
