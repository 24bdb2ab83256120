"""``callbot demo`` runs to the end: transcript with the speaker's name, files that play, and
nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from plugins.transcriber.samples import decode, samples, word_error_rate
from tests.synapse import REPO, synapse_python


def test_the_demo_prints_a_transcript_and_lists_files_that_play(
    tmp_path: Path, netns_addrs: tuple[str, str]
) -> None:
    data = tmp_path / "demo"
    env = {**os.environ, "CALLBOT_SYNAPSE_PYTHON": str(synapse_python())}
    run = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--data-dir", str(data)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    lines = re.findall(r"^\[\d\d:\d\d:\d\d\] Alice: (.*)$", out, re.MULTILINE)
    said = " ".join(samples()[n].text for n in ("slt-1", "slt-2", "slt-3", "slt-4"))
    assert len(lines) == 4, out
    assert word_error_rate(said, " ".join(lines)) < 0.25, out

    folder = Path(re.search(r"The call's files are in (.*):$", out, re.MULTILINE)[1])
    listed = re.findall(r"^  (\S+)\s+[\d,]+ bytes", out, re.MULTILINE)
    assert {"mixed.ogg", "meta.json", "transcript.txt", "transcript.vtt"} <= set(listed)
    (alice_file,) = [n for n in listed if n.startswith("alice") and n.endswith(".ogg")]
    pcm = decode(folder / alice_file)
    assert pcm.size / 48_000 > 15
    # the 2 s tone at the end of the script
    tail = pcm[-int(2.5 * 48_000) :].astype(np.float32)
    spectrum = np.abs(np.fft.rfft(tail))
    assert abs(np.argmax(spectrum) * 48_000 / tail.size - 440) < 5

    # Nothing it started is left: no process has the demo's folder on its command line.
    leftovers = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(data) in cmdline and int(proc.name) != os.getpid():
            leftovers.append(cmdline)
    assert leftovers == []
