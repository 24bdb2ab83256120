"""A LiveKit-compatible SFU for tests and the demo only; production uses LiveKit.

It speaks enough of LiveKit's signalling (dual peer-connection mode) for the livekit SDKs and
livekit-client in browsers to join rooms, publish Opus audio and VP8 video and receive each
other's tracks, and it serves the MatrixRTC JWT service endpoints (``/sfu/get``,
``/get_token``) on the same port. Media is forwarded as RTP packets and never decoded, so
end-to-end encrypted frames arrive byte-identical.

Not built: single peer-connection mode, simulcast layer selection, congestion control
feedback, dynacast, speaker detection, session resume (clients are asked to reconnect in
full instead), TURN/STUN.

Modules: ``server`` (HTTP app, :class:`DevSfu`, :func:`serve`), ``signalling`` (the
websocket), ``participant`` (peer connections), ``room``, ``forwarding`` (RTP relay),
``aiortc_compat`` (aiortc internals and their start-up check), ``auth`` (LiveKit tokens),
``jwt_service`` (MatrixRTC authorization service).
"""

from bot.devsfu.server import DevSfu, serve

__all__ = ["DevSfu", "serve"]
