"""``callbot transcribe``: transcribe a finished recording again, or any audio file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from plugins.transcriber.engine import BUNDLED, EngineSettings, SpeechEngine, TranscriptionError
from plugins.transcriber.offline import ProgressBar, transcribe_file, transcribe_folder
from plugins.transcriber.transcript import FORMATS

DESCRIPTION = (
    "Transcribe a call folder (<data_dir>/calls/<room>/<time>/, with the recorder's "
    "meta.json and one file per person): the transcript files (transcript.json, .vtt, .srt, "
    ".txt) are written into the folder, each line with its speaker. Or transcribe any audio "
    "file FFmpeg reads and print the transcript. Offline with the bundled model."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe a call folder or an audio file", description=DESCRIPTION
    )
    p.add_argument("path", type=Path, help="a call folder or an audio file")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="txt",
        help="what to print for an audio file (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default=BUNDLED,
        help="model: %(default)s (bundled), a model folder, or a faster-whisper name",
    )
    p.add_argument("--language", default="en", help='spoken language, or "auto" (default: en)')
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--compute-type", default="int8", help="(default: %(default)s)")
    p.add_argument(
        "--beam-size",
        type=int,
        default=1,
        help="beams searched; more is slower and not more accurate with tiny.en on the "
        "samples (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", action="store_true", default=None, help="always show a progress bar on stderr"
    )
    bar.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="never show one (default: for inputs of 30 s or more on a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        print(f"callbot transcribe: {path} does not exist", file=sys.stderr)
        return 2
    try:
        settings = EngineSettings(
            model=args.model,
            device=args.device,
            compute_type=args.compute_type,
            cpu_threads=args.threads,
            language=None if args.language == "auto" else args.language,
            beam_size=args.beam_size,
        )
    except ValueError as e:
        print(f"callbot transcribe: {e}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(sys.stderr, min_total=30.0 if args.progress is None else 0.0)
    progress = bar if show else None
    engine = SpeechEngine(settings)
    try:
        if path.is_dir():
            transcript = transcribe_folder(path, engine, progress)
            os.umask(0o077)
            for written in transcript.write(path):
                print(written)
        else:
            transcript = transcribe_file(path, engine, progress)
            sys.stdout.write(transcript.render(args.format))
    except TranscriptionError as e:
        print(f"callbot transcribe: {e}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    return 0
