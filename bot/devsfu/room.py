"""Rooms: who is in them, what they publish, and who hears about what."""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.protocol import models as m
from livekit.protocol import rtc as lk

if TYPE_CHECKING:
    from bot.devsfu.forwarding import Forwarder
    from bot.devsfu.participant import Participant

log = logging.getLogger(__name__)

_SID_ALPHABET = string.ascii_letters + string.digits
DATA_LABELS = ("_reliable", "_lossy")  # the data channels relayed between participants


def new_sid(prefix: str) -> str:
    """A LiveKit-style id; the SDKs require the prefixes (PA_ participants, TR_ tracks)."""
    return prefix + "".join(secrets.choice(_SID_ALPHABET) for _ in range(12))


class Room:
    def __init__(self, name: str, on_empty: Callable[[Room], None]) -> None:
        self.name = name
        self.sid = new_sid("RM_")
        self.created = time.time()
        self.participants: dict[str, Participant] = {}  # sid -> Participant
        self._on_empty = on_empty

    def proto(self) -> m.Room:
        return m.Room(
            sid=self.sid,
            name=self.name,
            creation_time=int(self.created),
            creation_time_ms=int(self.created * 1000),
            empty_timeout=300,
            departure_timeout=20,
            num_participants=len(self.participants),
            num_publishers=sum(1 for p in self.participants.values() if p.published),
        )

    def others(self, me: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not me and not p.closed]

    def by_identity(self, identity: str) -> list[Participant]:
        return [p for p in self.participants.values() if p.identity == identity]

    def add(self, participant: Participant) -> None:
        self.participants[participant.sid] = participant

    def remove(self, participant: Participant) -> None:
        self.participants.pop(participant.sid, None)
        if not self.participants:
            self._on_empty(self)

    async def broadcast_update(self, about: Participant) -> None:
        """Tell everybody else about ``about``'s current state (joined, tracks, left)."""
        if about.hidden:
            return
        update = lk.ParticipantUpdate(participants=[about.info()])
        for p in list(self.participants.values()):
            if p is not about:
                await p.send(update=update)

    async def track_ready(self, forwarder: Forwarder) -> None:
        """Media for a published track is negotiated: announce it and subscribe everybody who
        subscribes automatically."""
        publisher = forwarder.publisher
        if publisher.hidden:
            return  # hidden participants (recorders) are not forwarded
        await self.broadcast_update(publisher)
        for p in self.others(publisher):
            if p.can_subscribe and p.auto_subscribe:
                p.subscribe(forwarder)

    async def unpublish(self, forwarder: Forwarder, *, announce: bool) -> None:
        publisher = forwarder.publisher
        publisher.published.pop(forwarder.sid, None)
        for dt in list(forwarder.downtracks.values()):
            dt.detach()
            dt.subscriber.request_negotiation()
        if announce:
            publisher.version += 1
            await self.broadcast_update(publisher)
            await publisher.send(
                track_unpublished=lk.TrackUnpublishedResponse(track_sid=forwarder.sid)
            )

    def forward_data(self, sender: Participant, label: str, raw: bytes) -> None:
        """Relay a DataPacket from ``sender``'s publisher channel to the others' subscriber
        channel of the same name, honouring its destination identities."""
        if label not in DATA_LABELS or not sender.can_publish_data:
            return
        try:
            packet = m.DataPacket.FromString(raw)
        except Exception:  # protobuf's DecodeError, and anything odd it raises on garbage
            log.debug("%s sent an undecodable data packet", sender.identity)
            return
        packet.participant_identity, packet.participant_sid = sender.identity, sender.sid
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
            destinations |= set(packet.user.destination_identities)
        data = packet.SerializeToString()
        for p in self.others(sender):
            if not destinations or p.identity in destinations:
                p.send_data(label, data)
