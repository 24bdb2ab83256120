"""A real OpenAI-compatible speech-to-text service on 127.0.0.1 for the tests and the benchmark:
faster-whisper-server (PyPI, the [test] extra) serving the bundled tiny.en, offline.

It is configured to decode as the local engine does (greedy, int8, two threads, no
conditioning on earlier text), so the two engines can be compared. Its API takes the model
from a form field called ``model_name`` rather than OpenAI's ``model`` (which it ignores), so
the one model is served under its default name, "whisper-1".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bot.demo.synapse import free_port
from plugins.transcriber.engine import BUNDLED, model_location

MODEL_NAME = "whisper-1"


class SttServer:
    def __init__(self, directory: Path, cpu_threads: int = 2, word_timestamps: bool = True) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cpu_threads = cpu_threads
        self.word_timestamps = word_timestamps
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> SttServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        model, _online = model_location(BUNDLED)
        config = {  # JSON is YAML
            "models": [
                {
                    "name": MODEL_NAME,
                    "path": model,
                    "model_options": {
                        "device": "cpu",
                        "compute_type": "int8",
                        "cpu_threads": self.cpu_threads,
                        "local_files_only": True,
                    },
                    "transcribe_options": {
                        "beam_size": 1,
                        "temperature": 0.0,
                        "condition_on_previous_text": False,
                        "word_timestamps": self.word_timestamps,
                    },
                }
            ]
        }
        (self.dir / "models.yaml").write_text(json.dumps(config))
        setpriv = shutil.which("setpriv")  # it dies with the test process
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # never a download
        with open(self.dir / "server.log", "wb") as out:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "faster_whisper_server",
                    "--config",
                    str(self.dir / "models.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"faster-whisper-server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"faster-whisper-server did not answer within {timeout_s} s")

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
