"""Capacity of one bot process: N encrypted calls with M participants each, recorded (and with
``--transcribe`` transcribed too), everything real.

    scripts/netns-run.sh .venv/bin/python -m bench.load --calls 1,2,4 [--participants 4]
        [--seconds 20] [--no-record] [--transcribe --speakers 4] [--generator loop|sdk] [--keep]

Processes: a throwaway Synapse (``bot.demo.synapse``, run from ``$CALLBOT_SYNAPSE_PYTHON`` or
else the checkout's ``.venv-synapse``, which ``scripts/test.sh`` installs), the dev SFU
(``callbot dev-sfu``), the bot under test (``callbot run``: recorder, and the transcriber with
``--transcribe``), and this load generator. Its M participants are each in all N calls: they
join through MatrixRTC memberships and exchange media keys with the bot over Olm (the bot
framework's own Matrix and MatrixRTC layers), and publish encrypted audio, a tone each, or
speech where they are among the speakers: Opus loops encoded and encrypted once and sent over
aiortc (``bench.load_publisher``, about 0.5% of a core per participant), or with
``--generator sdk`` the whole bot framework encoding live through the livekit SDK
(``bench.load_voice``, about 3%). The first participant types ``!join``, ``!record start``
(``!transcribe start``) and at the end ``!leave`` in every room, as a user would.

Several call counts (``--calls 1,2,4``) run one after the other, each from scratch, and end
with the slope of every process's CPU (and of each of the bot's threads) over the number of
participants: what one more participant costs, without the fixed costs. Every figure is CPU
seconds per second of the run of one process, all its threads, from ``/proc/<pid>`` (nobody
else's), printed beside the machine's load average. The recordings are checked afterwards:
frames lost to a full queue (``meta.json`` "lost"), silences filled in while a participant
was there (``silences``), and the files themselves, decoded, for quiet stretches in the tones.
Captions are timed where a user sees them: from the moment the last sample of a sentence left
its speaker to the caption arriving at the first participant; a sentence without a caption
is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nio

from bench.load_files import analyse_recordings, caption_latencies
from bench.load_publisher import LoadParticipant
from bench.load_voice import make_voice

HOST = os.environ.get("CALLBOT_NETNS_ADDRS", "10.213.0.1").split(",")[0]
TICK = os.sysconf("SC_CLK_TCK")
LEGACY_TYPE = "org.matrix.msc3401.call.member"
WAIT_S = 180.0


def say(text: str) -> None:
    print(f"load: {text}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    return cpu_s_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed): where the time goes."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            name = name.rstrip("0123456789_-") or name  # tokio-runtime-w3 -> tokio-runtime-w
            if name == "python":  # Python's own threads carry the process name
                name = "python loop" if task.name == str(pid) else "python workers"
            out[name] = out.get(name, 0.0) + cpu_s_of(task / "stat")
    return out


def cpu_s_of(stat_path: Path) -> float:
    stat = stat_path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    """VmRSS in MiB (0 if the process is gone)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return 0.0
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def until(cond: Callable[[], bool], what: str, limit: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {limit:.0f} s for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Notices:
    """The bot's messages as the first participant sees them: (room, body, arrival)."""

    bot: str
    seen: list[tuple[str, str, float]] = field(default_factory=list)

    async def on_event(self, room: nio.MatrixRoom, event: nio.RoomMessageNotice) -> None:
        if event.sender == self.bot:
            self.seen.append((room.room_id, event.body, time.monotonic()))

    def count(self, prefix: str) -> int:
        return len({r for r, body, _ in self.seen if body.startswith(prefix)})


def bot_config(folder: Path, homeserver: str, user: str, sfu: str, args: Any, allowed: str) -> Path:
    plugins = ["recorder", "transcriber"] if args.transcribe else ["recorder"]
    text = f"""\
[matrix]
homeserver = "{homeserver}"
user_id = "{user}"

[bot]
data_dir = "{folder / "bot"}"
allowed_users = ["{allowed}"]

[rtc]
livekit_service_url = "{sfu}"
max_calls = {args.calls}

[logging]
level = "INFO"

[plugins]
enabled = {json.dumps(plugins)}

[plugins.recorder]
upload_mixed = false

[plugins.transcriber]
upload = []
"""
    path = folder / "bot.toml"
    path.write_text(text)
    return path


async def start_bots(
    args: Any,
    folder: Path,
    synapse: Any,
    sfu_url: str,
    account: Any,
    allowed: str,
    cleanup: list[Callable[[], Any]],
) -> tuple[list[Any], list[Path]]:
    """The bot under test: one ``callbot run``, or with ``--workers N`` a fleet of N workers
    of the account on a throwaway PostgreSQL (bot.fleet), their call folders in the one
    ``<folder>/bot/calls`` either way. (the processes, their logs)"""
    env = {"CALLBOT_MATRIX_PASSWORD": account.password}
    if args.workers == 1:
        config = bot_config(folder, synapse.url, account.user_id, sfu_url, args, allowed)
        proc = await start_process(
            [sys.executable, "-m", "bot", "run", "-c", str(config)], folder / "bot.log", env
        )
        cleanup.append(lambda: stop_process(proc))
        await until(lambda: "ready:" in (folder / "bot.log").read_text(), "the bot to start", 60)
        return [proc], [folder / "bot.log"]
    from tests.postgres import Postgres

    pg = Postgres()
    await asyncio.to_thread(pg.start)
    cleanup.append(lambda: asyncio.to_thread(pg.stop))
    env["CALLBOT_FLEET_DATABASE_URL"] = pg.url
    procs, logs = [], []
    for i in range(args.workers):
        wfolder = folder / f"worker{i}"
        wfolder.mkdir()
        config = bot_config(wfolder, synapse.url, account.user_id, sfu_url, args, allowed)
        config.write_text(
            config.read_text() + f'\n[fleet]\ncalls_dir = "{folder / "bot" / "calls"}"\n'
        )
        log = wfolder / "bot.log"
        proc = await start_process(
            [sys.executable, "-m", "bot", "run", "-c", str(config)], log, env
        )
        cleanup.append(lambda proc=proc: stop_process(proc))
        await until(lambda log=log: "ready:" in log.read_text(), "a worker to start", 90)
        if i == 0:  # the others sign their devices with the identity the first one made
            key = (wfolder / "bot" / "recovery-key.txt").read_text().strip().splitlines()[-1]
            env["CALLBOT_MATRIX_RECOVERY_KEY"] = key
        procs.append(proc)
        logs.append(log)
    return procs, logs


async def start_process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


async def stop_process(proc: Any, timeout: float = 60.0) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def participant(synapse: Any, account: Any, folder: Path, sfu: str, args: Any, voice: type) -> Any:
    """A participant of ``--generator sdk``: the bot framework with a plugin that speaks."""
    from bot.app import CallBot

    config = participant_config(synapse, account, folder, sfu, args, ["load-voice"])
    return CallBot(config, {"load-voice": voice})


def participant_config(
    synapse: Any, account: Any, folder: Path, sfu: str, args: Any, plugins: list[str] | None = None
) -> Any:
    from bot.config import parse_config

    raw = {
        "matrix": {
            "homeserver": synapse.url,
            "user_id": account.user_id,
            "password": account.password,
        },
        # Its own prefix, so it answers no command typed for the bot under test.
        "bot": {"data_dir": str(folder / account.localpart), "command_prefix": "lg:"},
        "rtc": {"livekit_service_url": sfu, "max_calls": args.calls, "auto_leave": False},
        "logging": {"level": "ERROR"},
        "plugins": {"enabled": plugins or []},
        "schedule": {"enabled": False},
    }
    return parse_config(raw, base_dir=folder, environ={})


async def make_rooms(host: Any, n: int, invite: list[str]) -> list[str]:
    rooms = []
    for i in range(n):
        resp = await host.matrix.nio.room_create(
            name=f"load {i}",
            invite=invite,
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
            power_level_override={"events": {LEGACY_TYPE: 0}},
        )
        if not isinstance(resp, nio.RoomCreateResponse):
            raise RuntimeError(f"room_create failed: {resp}")
        rooms.append(resp.room_id)
    return rooms


def joined(p: Any, room: str, user: str) -> bool:
    r = p.matrix.nio.rooms.get(room)
    return bool(r and user in r.users and not r.users[user].invited)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bot.demo.synapse import Synapse

    folder = Path(tempfile.mkdtemp(prefix="callbot-load-"))
    synapse = Synapse(folder / "synapse")  # $CALLBOT_SYNAPSE_PYTHON or .venv-synapse
    cleanup: list[Callable[[], Any]] = []
    result: dict[str, Any] = {
        "calls": args.calls,
        "participants": args.participants,
        "generator": args.generator,
    }
    try:
        await asyncio.to_thread(synapse.start)
        sfu_url = f"http://{HOST}:{args.port}"
        sfu_cmd = ["dev-sfu", "--host", HOST, "--port", str(args.port), "--log-level", "warning"]
        sfu = await start_process(
            [sys.executable, "-m", "bot", *sfu_cmd, "--homeserver", synapse.url],
            folder / "sfu.log",
        )
        cleanup.append(lambda: stop_process(sfu))
        bot_account = synapse.register("callbot")
        accounts = [synapse.register("p") for _ in range(args.participants)]
        bots, logs = await start_bots(
            args, folder, synapse, sfu_url, bot_account, accounts[0].user_id, cleanup
        )
        bot = bots[0]
        ready_rss = sum(rss_mb(b.pid) for b in bots)
        say(f"bot ready, RSS {ready_rss:.0f} MiB")

        voices: list[Any]
        if args.generator == "sdk":
            voices = [make_voice(i, frozenset(), args.idle) for i in range(args.participants)]
            people = [
                participant(synapse, a, folder, sfu_url, args, v)
                for a, v in zip(accounts, voices, strict=True)
            ]
        else:  # each participant is its own "voice": it publishes itself
            people = voices = [
                LoadParticipant(participant_config(synapse, a, folder, sfu_url, args), i, args.idle)
                for i, a in enumerate(accounts)
            ]
        for i, p in enumerate(people):
            await p.start()
            cleanup.append(p.stop)
            await p.matrix.nio.set_displayname(f"Speaker {i + 1}")
        host = people[0]
        notices = Notices(bot_account.user_id)
        host.matrix.nio.add_event_callback(notices.on_event, nio.RoomMessageNotice)

        others = [bot_account.user_id] + [a.user_id for a in accounts[1:]]
        rooms = await make_rooms(host, args.calls, others)
        await until(
            lambda: all(joined(host, r, u) for r in rooms for u in others), "everyone in the rooms"
        )
        say(f"{args.calls} rooms, everyone in them")
        # Speakers: the first participant of every call, then the second, ...
        slots = [(i, r) for i in range(args.participants) for r in rooms][: args.speakers]
        for i, voice in enumerate(voices):
            voice.speak_rooms = frozenset(r for j, r in slots if j == i)

        gate = asyncio.Semaphore(4)

        async def join(p: Any, room: str) -> None:
            async with gate:
                if isinstance(p, LoadParticipant):
                    await p.join_call(room)
                else:  # the bot framework's media engine publishes for its plugin
                    await p.rtc.get_room_session(room).join()

        await asyncio.gather(*(join(p, r) for p in people for r in rooms))
        await until(
            lambda: all(len(v.instances) == args.calls for v in voices), "participants' tracks"
        )
        say(f"{args.participants} participants in each call, publishing")

        host.matrix.nio.olm.users_for_key_query.add(bot_account.user_id)
        await host.matrix.nio.keys_query()

        def bot_in(room: str) -> bool:
            members = host.rtc.get_room_session(room).memberships
            return any(m.user_id == bot_account.user_id for m in members)

        for room in rooms:
            await host.matrix.send(room, {"msgtype": "m.text", "body": "!join"})
        await until(lambda: all(bot_in(r) for r in rooms), "the bot in every call")
        commands = (["!record start"] if args.record else []) + (
            ["!transcribe start"] if args.transcribe else []
        )
        await asyncio.sleep(2.0)  # the bot's plugins start once it is connected
        for room in rooms:
            for text in commands:
                await host.matrix.send(room, {"msgtype": "m.text", "body": text})
        if args.record:
            await until(
                lambda: notices.count("🔴 This call is being recorded") == args.calls, "rec"
            )
        if args.transcribe:
            await until(
                lambda: notices.count("📝 This call is being transcribed") == args.calls, "tr"
            )
        doing = " and ".join(
            w for w, on in (("recording", args.record), ("transcribing", args.transcribe)) if on
        )
        say(f"{doing or 'in the calls, not recording'}: {args.calls} calls")
        await asyncio.sleep(args.settle)

        # ---------------------------------------------------------------- the measurement
        pids = {"sfu": sfu.pid}
        if synapse.proc is not None:
            pids["synapse"] = synapse.proc.pid
        for i, b in enumerate(bots):
            pids["bot" if len(bots) == 1 else f"worker{i}"] = b.pid
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        threads0 = [thread_cpu_s(b.pid) for b in bots]
        gen0 = thread_cpu_s(os.getpid())
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, load0 = time.monotonic(), loadavg()
        rss = [sum(rss_mb(b.pid) for b in bots)]
        window_start = t0
        spy = None
        if args.profile:  # where the bot's Python time goes (py-spy, collapsed stacks)
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(bot.pid),
                "-d", str(int(args.seconds)), "-r", "50", "-f", "raw", "-o", str(args.profile),
                "--threads", "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(1.0)
            rss.append(sum(rss_mb(b.pid) for b in bots))
        if spy is not None:
            await spy.wait()
        await host.matrix.send(rooms[0], {"msgtype": "m.text", "body": "!status"})
        wall = time.monotonic() - t0
        cpu = {k: (cpu_s(p) - cpu0[k]) / wall for k, p in pids.items()}
        if len(bots) > 1:  # the fleet's workers together
            cpu["bot"] = sum(cpu[f"worker{i}"] for i in range(len(bots)))
        threads: dict[str, float] = {}  # by thread name, the fleet's workers together
        for b, before in zip(bots, threads0, strict=True):
            for k, v in thread_cpu_s(b.pid).items():
                threads[k] = threads.get(k, 0.0) + (v - before.get(k, 0.0)) / wall
        threads = {k: round(v, 3) for k, v in threads.items()}
        result["bot_threads_cores"] = {k: v for k, v in threads.items() if v >= 0.005}
        gen = {
            k: round((v - gen0.get(k, 0.0)) / wall, 3) for k, v in thread_cpu_s(os.getpid()).items()
        }
        result["generator_threads_cores"] = {k: v for k, v in gen.items() if v >= 0.005}
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu["load generator"] = (
            own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        ) / wall
        window_end = time.monotonic()
        result.update(
            seconds=round(wall, 1),
            loadavg_start=load0,
            loadavg_end=loadavg(),
            cpu_cores={k: round(v, 3) for k, v in cpu.items()},
            rss_ready_mb=round(ready_rss, 1),
            rss_first_mb=round(rss[0], 1),
            rss_last_mb=round(rss[-1], 1),
            rss_max_mb=round(max(rss), 1),
        )
        # An overloaded machine may answer late: the figures without !status's then.
        with contextlib.suppress(TimeoutError):
            await until(lambda: notices.count("matrix-callbot ") >= 1, "the !status reply", 60)
        status = next((b for _, b, _ in notices.seen if b.startswith("matrix-callbot ")), "")
        result["status_answered"] = bool(status)
        result["status_plugin_lines"] = [ln.strip() for ln in status.splitlines() if "plugin" in ln]
        result["sender_late"] = sum(
            window_start <= t <= window_end
            for voice in voices
            for v in voice.instances.values()
            for t, _ in getattr(v.stats, "late", ())
        )
        result["sender_underruns"] = sum(
            window_start <= t <= window_end
            for voice in voices
            for v in voice.instances.values()
            for t, _ in v.stats.underruns
        )
        queued = [
            re.search(r"(\d+) dropped, \d+ errors, (\d+) of", ln) for ln in status.splitlines()
        ]
        found = [(int(m[1]), int(m[2])) for m in queued if m]
        result["status_dropped"] = sum(d for d, _ in found)
        result["status_max_queued"] = max((q for _, q in found), default=0)
        if args.transcribe:  # captions of the window's last sentences may still come
            await asyncio.sleep(max(0.0, window_end + 5.0 - time.monotonic()))
            result["captions"] = caption_latencies(notices.seen, voices, window_start, window_end)

        for room in rooms:
            await host.matrix.send(room, {"msgtype": "m.text", "body": "!leave"})
        metas = lambda: list((folder / "bot" / "calls").glob("*/*/meta.json"))  # noqa: E731

        def complete() -> bool:
            done = 0
            for m in metas():
                with contextlib.suppress(OSError, ValueError):
                    done += bool(json.loads(m.read_text()).get("complete"))
            return done == args.calls

        with contextlib.suppress(TimeoutError):
            if args.record:
                await until(complete, "the recordings to be finished", 120)
        result["recordings_unfinished"] = sum(
            not json.loads(m.read_text()).get("complete") for m in metas()
        )
        await asyncio.sleep(3.0)
        result["rss_idle_after_mb"] = round(sum(rss_mb(b.pid) for b in bots), 1)
        # None: still running, as it should be
        result["bot_exit_code"] = next((b.returncode for b in bots if b.returncode), None)
        result["workers"] = len(bots)
        speakers = {(i, r) for i, r in slots}
        ids = {a.user_id: i for i, a in enumerate(accounts)}
        result["recordings"] = (
            await asyncio.to_thread(analyse_recordings, metas(), ids, speakers, args.idle == "tone")
            if args.record
            else None
        )
        if args.transcribe:
            missed = 0
            for m in metas():
                t = m.parent / "transcript.json"
                if t.exists():
                    missed += sum(json.loads(t.read_text()).get("missed_utterances", {}).values())
            result["captions"]["missed_utterances"] = missed
        errors = [ln for log in logs for ln in log.read_text().splitlines() if " ERROR " in ln]
        result["bot_log_errors"] = errors[:5]
        result["bot_log_error_count"] = len(errors)
        return result
    finally:
        for stop in reversed(cleanup):
            with contextlib.suppress(Exception):
                await stop()
        synapse.stop()
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    n, m = r["calls"], r["participants"]
    bot_cpu = r["cpu_cores"]["bot"]
    grown = r["rss_last_mb"] - r["rss_first_mb"]
    rec = r["recordings"]
    workers = f", {r['workers']} fleet workers" if r.get("workers", 1) > 1 else ""
    print(
        f"{n} calls x {m} participants{workers}, {r['seconds']} s measured, "
        f"generator {r['generator']}"
    )
    print(f"load average {r['loadavg_start']} -> {r['loadavg_end']}")
    print(
        "CPU, cores: "
        + ", ".join(f"{k} {v * 100:.1f}%" for k, v in r["cpu_cores"].items())
        + " (100% = one core)"
    )
    cores = r["cpu_cores"]
    print(
        f"bot CPU per call {bot_cpu / n * 100:.2f}% of a core, per participant "
        f"{bot_cpu / (n * m) * 100:.2f}%; per participant: load generator "
        f"{cores['load generator'] / (n * m) * 100:.2f}%, SFU {cores['sfu'] / (n * m) * 100:.2f}%"
    )
    per = (r["rss_last_mb"] - r["rss_ready_mb"]) / (n * m)
    print(
        f"bot RSS: ready {r['rss_ready_mb']} MiB, in the calls {r['rss_first_mb']} -> "
        f"{r['rss_last_mb']} MiB (max {r['rss_max_mb']}, {grown:+.1f} over the window), "
        f"{per:.2f} MiB per participant; after leaving {r['rss_idle_after_mb']} MiB"
    )
    if not rec:
        print("recorder: not recording (--no-record)")
    else:
        print(
            f"recorder: {rec['files']} participant files, lost frames {rec['lost_frames']}, "
            f"silences while present {rec['silences']} ({rec['silence_s']:.2f} s), "
            f"quiet stretches in the tones {rec['quiet_gaps']} ({rec['quiet_s']:.2f} s), "
            f"file durations {rec['duration_min']:.1f}-{rec['duration_max']:.1f} s "
            f"(mix {rec['mix_min']:.1f}-{rec['mix_max']:.1f} s)"
        )
    print(
        "bot CPU by thread: "
        + ", ".join(f"{k} {v * 100:.1f}%" for k, v in r["bot_threads_cores"].items())
    )
    print(
        "generator CPU by thread: "
        + ", ".join(f"{k} {v * 100:.1f}%" for k, v in r["generator_threads_cores"].items())
    )
    if r["bot_exit_code"] is not None:
        print(f"THE BOT EXITED after !leave, with {r['bot_exit_code']}")
    if r["recordings_unfinished"]:
        print(f"recordings not finished 120 s after !leave: {r['recordings_unfinished']}")
    print(
        f"participants' own underruns in the window (generator starved): "
        f"{r['sender_underruns']}; packets it sent over 60 ms late: {r['sender_late']}"
    )
    if not r.get("status_answered", True):
        print("!status at the end: NOT ANSWERED within 60 s (its figures below are missing)")
    print(
        f"!status at the end: {r['status_dropped']} frames dropped by all plugins, longest "
        f"queue {r['status_max_queued']} frames; e.g. {r['status_plugin_lines'][:2]}"
    )
    if "captions" in r:
        c = r["captions"]
        print(
            f"captions: {c['spoken']} sentences spoken, {c['missed']} without a caption; "
            f"latency from the sentence's last sample leaving its speaker to the caption "
            f"arriving: p50 {c['p50']} s, p90 {c['p90']} s, max {c['max']} s, "
            f"{c['within_2s']:.0%} within 2 s; {c['missed_utterances']} refused by the engine"
        )
    if r["bot_log_error_count"]:
        print(f"bot log: {r['bot_log_error_count']} errors, first: {r['bot_log_errors'][0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--calls", default="5", help="calls, or several (1,2,4): one run each, then the slope"
    )
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-record: the bot joins and hears every participant (its recorder wants "
        "the audio) but records nothing: what hearing alone costs",
    )
    ap.add_argument("--transcribe", action="store_true")
    ap.add_argument("--speakers", type=int, default=0, help="participants speaking (all calls)")
    ap.add_argument(
        "--idle", choices=["tone", "silence"], default="tone", help="what non-speakers send"
    )
    ap.add_argument(
        "--generator",
        choices=["loop", "sdk"],
        default="loop",
        help="participants' media: pre-encoded, pre-encrypted Opus loops over aiortc (cheap), "
        "or the livekit SDK encoding live (what the bot framework itself does)",
    )
    ap.add_argument("--port", type=int, default=7890)
    ap.add_argument(
        "--workers", type=int, default=1, help="a fleet of this many workers (bot.fleet)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--profile", type=Path, help="py-spy the bot into this file (raw)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = []
    for calls in [int(n) for n in str(args.calls).split(",")]:
        one = argparse.Namespace(**{**vars(args), "calls": calls})
        results.append(asyncio.run(run(one)))
        report(results[-1])
        print(flush=True)
    if len(results) > 1:
        report_slope(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def report_slope(results: list[dict[str, Any]]) -> None:
    """What one more participant costs: the slope over the runs (fixed costs drop out)."""
    people = [r["calls"] * r["participants"] for r in results]
    print("per participant, as the slope over " + ", ".join(f"{r['calls']}" for r in results))
    print("calls (least squares of CPU over participants; 100% = one core):")
    for who in results[0]["cpu_cores"]:
        ys = [r["cpu_cores"].get(who, 0.0) for r in results]
        print(f"  {who}: {slope(people, ys) * 100:.2f}% per participant")
    threads = sorted({k for r in results for k in r["bot_threads_cores"]})
    parts = []
    for name in threads:
        ys = [r["bot_threads_cores"].get(name, 0.0) for r in results]
        parts.append(f"{name} {slope(people, ys) * 100:.2f}%")
    print("  bot by thread: " + ", ".join(parts))
    print("  load average at the starts: " + "; ".join(r["loadavg_start"] for r in results))


if __name__ == "__main__":
    main()
