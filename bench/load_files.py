"""What ``bench.load`` checks after a run: the recordings (lost frames, filled-in silences,
quiet stretches in the decoded tones, durations) and the captions' latency."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import av
import numpy as np

RATE = 48_000
WINDOW = RATE // 50  # 20 ms
#: A 20 ms window of a tone quieter than this share of the tone's median level is a gap.
QUIET = 0.1
#: ... and any window quieter than this (the tones' RMS is 0.18 of full scale)
ABSOLUTE_QUIET = 0.01
#: Stay this far from a file's start (the participant's first audio) and end.
MARGIN_S = 0.5


def analyse_recordings(
    metas: list[Path], ids: dict[str, int], speakers: set[tuple[int, str]], tones: bool
) -> dict[str, Any]:
    """Sum over every call's recording. ``ids``: user ID -> participant index; ``speakers``:
    (index, room) of those who spoke (no tone to check); ``tones``: the others held a tone."""
    lost = silences = quiet = files = 0
    silence_s = quiet_s = 0.0
    durations: list[float] = []
    mixes: list[float] = []
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        lost += sum(g["frames"] for g in meta["lost"])
        mixes.append(meta["duration_s"])
        for p in meta["participants"]:
            files += 1
            # The first silence runs from the start of the file to the participant's first
            # frame; any other was filled in while they were there.
            for a, b in p["silences"]:
                if a > 0:
                    silences += 1
                    silence_s += b - a
            pcm = _decode(meta_path.parent / p["file"])
            durations.append(pcm.size / RATE)
            if tones and (ids.get(p["user_id"], -1), meta["room_id"]) not in speakers:
                n, s = _quiet_stretches(pcm, p["joined_at_s"])
                quiet += n
                quiet_s += s
    return {
        "files": files,
        "lost_frames": lost,
        "silences": silences,
        "silence_s": round(silence_s, 3),
        "quiet_gaps": quiet,
        "quiet_s": round(quiet_s, 3),
        "duration_min": min(durations, default=0.0),
        "duration_max": max(durations, default=0.0),
        "mix_min": min(mixes, default=0.0),
        "mix_max": max(mixes, default=0.0),
    }


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _quiet_stretches(pcm: np.ndarray, joined_at: float) -> tuple[int, float]:
    """Runs of quiet 20 ms windows in a tone, after its start and before its end."""
    if pcm.dtype != np.float32 or pcm.size == 0:
        return 0, 0.0
    first = int((joined_at + MARGIN_S) * RATE)
    last = pcm.size - int(MARGIN_S * RATE)
    usable = (last - first) // WINDOW
    if usable <= 0:
        return 0, 0.0
    windows = pcm[first : first + usable * WINDOW].reshape(usable, WINDOW)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    # Relative to the tone's own level, but never below an absolute floor: a file that is
    # silent throughout (media that never decrypted) is one long quiet stretch, not clean.
    quiet = rms < max(QUIET * float(np.median(rms)), ABSOLUTE_QUIET)
    runs = int(np.count_nonzero(quiet[1:] & ~quiet[:-1]) + int(quiet[0]))
    return runs, float(np.count_nonzero(quiet)) * WINDOW / RATE


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def caption_latencies(
    seen: list[tuple[str, str, float]],
    voices: list[Any],
    start: float,
    end: float,
    grace: float = 5.0,
) -> dict[str, Any]:
    """Every sentence whose last sample left its speaker between ``start`` and ``end``, and
    the caption ``Speaker k: text`` that best matches it, arriving up to ``grace`` seconds
    after ``end``: latency from the sentence's end to the caption's arrival. A sentence with
    no caption is missed, whatever the reason (refused, lost, misheard beyond recognition)."""
    latencies = []
    matched: set[int] = set()
    for room, body, arrived in seen:
        m = re.match(r"Speaker (\d+): (.*)", body)
        if m is None or not start <= arrived <= end + grace:
            continue
        voice = voices[int(m.group(1)) - 1].instances.get(room)
        if voice is None:
            continue
        heard = _words(m.group(2))
        said = [s for s in voice.stats.spoken if s.end <= arrived and id(s) not in matched]
        if not said or not heard:
            continue
        best = max(said, key=lambda s: (len(heard & _words(s.text)), s.end))
        if heard & _words(best.text) and start <= best.end <= end:
            matched.add(id(best))
            latencies.append(arrived - best.end)
    spoken = [
        s
        for v in voices
        for inst in v.instances.values()
        for s in inst.stats.spoken
        if start <= s.end <= end
    ]
    q = statistics.quantiles(latencies, n=10) if len(latencies) >= 2 else [0.0] * 9
    return {
        "n": len(latencies),
        "spoken": len(spoken),
        "missed": sum(id(s) not in matched for s in spoken),
        "p50": round(statistics.median(latencies), 2) if latencies else None,
        "p90": round(q[8], 2),
        "max": round(max(latencies), 2) if latencies else None,
        "within_2s": sum(x <= 2.0 for x in latencies) / len(latencies) if latencies else 0.0,
    }
