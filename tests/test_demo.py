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


def test_without_synapse_the_demo_says_how_to_install_it_apart(tmp_path: Path) -> None:
    """Synapse runs from its own environment (its pins must not mix with the bot's): the demo
    never falls back to the bot's Python, and says how to make that environment."""
    env = {**os.environ, "CALLBOT_SYNAPSE_PYTHON": str(tmp_path / "none" / "python")}
    run = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--data-dir", str(tmp_path / "demo")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "Synapse runs from its own virtual environment" in run.stderr
    assert "python3 -m venv .venv-synapse" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "demo").exists()


def test_the_scripts_install_the_synapse_version_the_demo_expects() -> None:
    from bot.demo.synapse import SYNAPSE_VERSION

    env_sh = (REPO / "scripts" / "_env.sh").read_text()
    assert re.search(r"^SYNAPSE_VERSION=(\S+)$", env_sh, re.MULTILINE)[1] == SYNAPSE_VERSION
    assert "matrix-synapse" not in (REPO / "pyproject.toml").read_text()  # not in our .venv
