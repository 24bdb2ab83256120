"""Makes these speech samples: flite voices -> 48 kHz mono Opus/Ogg, text in sentences.json.

Run ``python -m plugins.transcriber.samples.make_samples`` with Debian's ``flite``
installed. The files are committed, so nothing else needs flite.
"""

import json
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

from plugins.transcriber.samples import FOLDER, decode

SENTENCES = {
    "slt-1": ("slt", "the quick brown fox jumps over the lazy dog"),
    "slt-2": ("slt", "please send the quarterly report to the finance team"),
    "slt-3": ("slt", "we will meet again on thursday afternoon"),
    "slt-4": ("slt", "the birch canoe slid on the smooth planks"),
    "rms-1": ("rms", "can everyone hear me clearly"),
    "rms-2": ("rms", "the new release is planned for next month"),
    "rms-3": ("rms", "glue the sheet to the dark blue background"),
    "rms-4": ("rms", "let us review the budget before the meeting ends"),
}
RATE = 48_000
FRAME = 960


def main() -> None:
    refs = {}
    tmp = Path(tempfile.mkdtemp())
    for name, (voice, text) in SENTENCES.items():
        wav = tmp / f"{name}.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True)
        pcm = decode(wav, RATE)
        with av.open(str(FOLDER / f"{name}.ogg"), "w", format="ogg") as out:
            stream = out.add_stream("libopus", rate=RATE, layout="mono")
            stream.bit_rate = 24_000
            for i in range(0, len(pcm), FRAME):
                chunk = np.pad(pcm[i : i + FRAME], (0, max(0, i + FRAME - len(pcm))))
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                frame.sample_rate, frame.pts = RATE, i
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        refs[f"{name}.ogg"] = {"voice": voice, "text": text, "seconds": round(len(pcm) / RATE, 2)}
    (FOLDER / "sentences.json").write_text(json.dumps(refs, indent=1) + "\n")


if __name__ == "__main__":
    main()
