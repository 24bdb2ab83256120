"""The load generator's media: Opus loops encrypted the way Element Call encrypts frames."""

from __future__ import annotations

import av
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench.load_publisher import RATE, encrypt_frame, frame_key, speech_script, tone_script


def test_a_frame_is_toc_ciphertext_iv_and_trailer_under_the_hkdf_key() -> None:
    raw, payload = bytes(range(16)), b"\x78" + bytes(60)
    frame = encrypt_frame(frame_key(raw), 7, payload)
    # livekit-client: HKDF-SHA256(raw, "LKFrameEncryptionKey", info = 128 zero bytes), 128 bit
    key = HKDF(hashes.SHA256(), 16, b"LKFrameEncryptionKey", bytes(128)).derive(raw)
    assert frame[0] == 0x78 and frame[-2:] == bytes([12, 7])
    iv, body = frame[-14:-2], frame[1:-14]
    assert AESGCM(key).decrypt(iv, body, frame[:1]) == payload[1:]
    assert encrypt_frame(frame_key(raw), 7, payload)[-14:-2] != iv  # a fresh IV per frame


def test_the_tone_loop_is_one_second_of_20_ms_packets_that_decode_to_the_tone() -> None:
    script = tone_script(2)  # 440 Hz
    assert len(script.packets) == 50
    codec = av.CodecContext.create("libopus", "r")
    pcm = []
    for data in script.packets * 2:
        packet = av.Packet(data)
        frames = codec.decode(packet)  # type: ignore[attr-defined]
        pcm += [f.to_ndarray().reshape(-1)[:: len(f.layout.channels)] for f in frames]
    audio = np.concatenate(pcm).astype(np.float32)[RATE // 2 :]
    peak = np.argmax(np.abs(np.fft.rfft(audio))) * RATE / audio.size
    assert abs(peak - 440) < 5


def test_speech_marks_where_each_sentence_ends() -> None:
    script = speech_script(0, "!room:x")
    assert script.sentence_ends and max(script.sentence_ends) < len(script.packets)
    assert all(text for text in script.sentence_ends.values())
