"""``!play`` and friends: a queue of music files and streams, played into the call through
an encrypted audio track of the bot's.

Control commands (play, skip, pause, resume, stop, seek, volume, loop, shuffle, remove,
clear) are for the bot's allowed users by default; ``!queue`` and ``!np`` are for anyone in
the room. Both can be changed per command in ``[commands.<name>]`` (docs/music.md).
"""

from __future__ import annotations

import logging
import re
import unicodedata

from bot.plugin import (
    Arg,
    AudioFrame,
    AudioOut,
    AudioWants,
    CallContext,
    CommandContext,
    CommandError,
    ParticipantChange,
    ParticipantEvent,
    Plugin,
    command,
)
from plugins.music.config import MusicConfig
from plugins.music.decoder import RATE
from plugins.music.dsp import Chain, DspSettings
from plugins.music.player import Player, State, clock_text
from plugins.music.queue import LoopMode, PlayQueue, QueueFull, Track
from plugins.music.sources import SourceError, SourcePolicy, classify

log = logging.getLogger(__name__)

#: The cheapest audio the bot can be asked for: it only has to notice who speaks (ducking).
SPEECH_WATCH = AudioWants(sample_rate=8_000, channels=1, frame_ms=100)
#: Lines of !queue (long queues are summed up: a chat message is no place for 100 lines).
QUEUE_LINES = 10
_QUIET = (ParticipantChange.SILENT, ParticipantChange.LEFT, ParticipantChange.MUTED)


class MusicPlayer(Plugin):
    name = "music"
    Config = MusicConfig

    def __init__(self, config: MusicConfig | None = None) -> None:
        self.config = config or MusicConfig()
        c = self.config
        # Ducking needs to know who speaks; the bot tells that only while some plugin takes
        # audio, so ask for the cheapest stream (8 kHz, 100 ms frames) and ignore it.
        self.audio = SPEECH_WATCH if c.duck else None
        self.queue = PlayQueue(max_size=c.max_queue)
        self.chain = Chain(
            DspSettings(
                normalize=c.normalize,
                target_lufs=c.target_lufs,
                max_boost_db=c.max_boost_db,
                duck_db=c.duck_db,
                duck_attack_s=c.duck_attack_s,
                duck_release_s=c.duck_release_s,
                fade_s=c.fade_s,
            ),
            volume=c.volume / 100,
        )
        self.policy = SourcePolicy(
            c.music_dir, c.allow_urls, c.allow_private_urls, c.network_timeout_s
        )
        self.call: CallContext | None = None
        self.player: Player | None = None
        self.speaking: set[str] = set()  # LiveKit identities of who speaks now

    async def on_call_start(self, call: CallContext) -> None:
        self.call = call

        async def open_output() -> AudioOut:
            return await call.publish_audio("music", RATE, 1)

        self.player = Player(
            self.queue,
            self.chain,
            self.policy,
            open_output,
            call.post,
            lead_s=self.config.lead_ms / 1000,
            announce=self.config.announce,
        )
        self.player.start()

    async def on_call_end(self) -> None:
        if self.player is not None:
            await self.player.close()

    async def on_audio(self, frame: AudioFrame) -> None:
        """Unused: the stream is only there so that speaking is detected."""

    async def on_participant(self, event: ParticipantEvent) -> None:
        # Only remote participants' audio is heard, so the bot's own music never ducks itself.
        if event.change is ParticipantChange.SPEAKING:
            self.speaking.add(event.participant.identity)
        elif event.change in _QUIET:
            self.speaking.discard(event.participant.identity)
        else:
            return
        if self.config.duck:
            self.chain.ducking(bool(self.speaking))

    # ------------------------------------------------------------------ commands

    @command(
        help="Play a file of the music folder or a URL (queued if something plays)",
        args=[Arg("what", rest=True)],
    )
    async def play(self, ctx: CommandContext, what: str) -> None:
        player = self._player()
        what = checked_source(what)
        try:
            source = await self._call().run_blocking(classify, what, self.policy)
        except SourceError as e:
            raise CommandError(_unechoed(str(e), what)) from None
        except OSError:
            # what the file system makes of an odd name (a part over 255 bytes, ...): it is
            # no file of the music folder either way
            raise CommandError(f"Nothing in the music folder matches {_shown(what)}.") from None
        except ValueError:  # urlsplit's, of "http://[::1" and the like
            raise CommandError(f"I cannot read {_shown(what)} as a file name or URL.") from None
        track = Track(source.label, ctx.sender, player.clock(), source.title, source=source)
        idle = player.state is State.IDLE and self.queue.current is None
        try:
            position = self.queue.add(track)
        except QueueFull as e:
            raise CommandError(
                f"{e} Remove some ({ctx.prefix}remove, {ctx.prefix}clear)."
            ) from None
        if idle:
            await ctx.reply(f"Starting {source.label} …")
        else:
            await ctx.reply(f"Queued as #{position}: {source.label}")
            track.requested_at = 0.0  # the delay to first audio counts only from idle
        player.wake()

    @command("queue", help="What plays now and what comes next", allowed_users_only=False)
    async def show_queue(self, ctx: CommandContext) -> None:
        lines = [self._now_line()]
        upcoming = list(self.queue.upcoming)
        for i, track in enumerate(upcoming[:QUEUE_LINES], 1):
            length = f" ({clock_text(track.duration)})" if track.duration else ""
            lines.append(f"{i}. {track.name}{length}, asked for by {track.requested_by}")
        if len(upcoming) > QUEUE_LINES:
            lines.append(f"… and {len(upcoming) - QUEUE_LINES} more ({len(upcoming)} in all)")
        elif not upcoming:
            lines.append("Nothing queued.")
        await ctx.reply("\n".join(lines))

    @command(help="What plays now", allowed_users_only=False)
    async def np(self, ctx: CommandContext) -> None:
        await ctx.reply(self._now_line())

    @command(help="Skip to the next track")
    async def skip(self, ctx: CommandContext) -> None:
        player = self._playing()
        player.skip()
        upcoming = self.queue.upcoming
        await ctx.reply(f"Skipped. Next: {upcoming[0].name}" if upcoming else "Skipped.")

    @command(help="Pause the music")
    async def pause(self, ctx: CommandContext) -> None:
        player = self._playing()
        if player.state is State.PAUSED:
            raise CommandError(f"Already paused; {ctx.prefix}resume plays on.")
        player.pause()
        await ctx.reply("Paused.")

    @command(help="Play on after a pause")
    async def resume(self, ctx: CommandContext) -> None:
        player = self._playing()
        if player.state is not State.PAUSED:
            raise CommandError("The music is not paused.")
        player.resume()
        await ctx.reply("Playing on.")

    @command(help="Stop the music and empty the queue")
    async def stop(self, ctx: CommandContext) -> None:
        player = self._player()
        dropped = len(self.queue)
        player.stop()
        await ctx.reply(f"Stopped; {dropped} queued tracks dropped." if dropped else "Stopped.")

    @command(help="Jump to a time in the track: !seek 1:30 (or 90, +15, -10)", args=[Arg("time")])
    async def seek(self, ctx: CommandContext, time: str) -> None:
        player = self._playing()
        track = self.queue.current
        assert track is not None
        if track.duration is None:
            raise CommandError("This is a live stream (or its length is unknown); it cannot seek.")
        target = parse_time(time, player.position)
        if target is None:
            raise CommandError(f"Usage: {ctx.prefix}seek mm:ss (or seconds, +15, -10)")
        if target >= track.duration:
            raise CommandError(f"{track.name} is only {clock_text(track.duration)} long.")
        player.seek(target)
        await ctx.reply(f"Jumping to {clock_text(target)}.")

    @command(
        help="Show or set the volume: !volume 0-200 (percent)",
        args=[Arg("percent", required=False)],
    )
    async def volume(self, ctx: CommandContext, percent: str | None = None) -> None:
        if percent is None:
            await ctx.reply(f"Volume: {round(self.chain.volume * 100)}%")
            return
        text = percent.strip().rstrip("%")
        level = _number(text, 3)
        if level is None or not 0 <= level <= 200:
            raise CommandError(f"Usage: {ctx.prefix}volume 0-200 (percent; 100 is normal)")
        self.chain.volume = level / 100
        await ctx.reply(f"Volume: {level}%")

    @command(
        help="Repeat: !loop off, one (this track) or all (the queue)",
        args=[Arg("mode", required=False)],
    )
    async def loop(self, ctx: CommandContext, mode: str | None = None) -> None:
        if mode is not None:
            try:
                self.queue.loop = LoopMode(mode.strip().lower())
            except ValueError:
                raise CommandError(f"Usage: {ctx.prefix}loop off|one|all") from None
        await ctx.reply(f"Loop: {self.queue.loop.value}")

    @command(help="Shuffle the queue")
    async def shuffle(self, ctx: CommandContext) -> None:
        if len(self.queue) < 2:
            raise CommandError("There is nothing to shuffle.")
        self.queue.shuffle()
        await ctx.reply(f"Shuffled {len(self.queue)} tracks.")

    @command(help="Remove a track from the queue: !remove <n> (n as in !queue)", args=[Arg("n")])
    async def remove(self, ctx: CommandContext, n: str) -> None:
        position = _number(n.strip(), 6)
        if position is None:
            raise CommandError(f"Usage: {ctx.prefix}remove <n>, n as {ctx.prefix}queue shows")
        try:
            track = self.queue.remove(position)
        except IndexError:
            raise CommandError(
                f"There is no #{position} in the queue ({len(self.queue)} tracks)."
            ) from None
        await ctx.reply(f"Removed #{position}: {track.name}")

    @command(help="Empty the queue (what plays now plays on)")
    async def clear(self, ctx: CommandContext) -> None:
        dropped = self.queue.clear()
        await ctx.reply(f"Cleared {dropped} tracks from the queue.")

    # ------------------------------------------------------------------ helpers

    def _now_line(self) -> str:
        track, player = self.queue.current, self.player
        if track is None or player is None or player.state is State.IDLE:
            return "Nothing is playing."
        paused = " (paused)" if player.state is State.PAUSED else ""
        length = clock_text(track.duration) if track.duration else "live"
        return (
            f"{'⏸' if paused else '▶'} {track.name}: {clock_text(player.position)} / {length}"
            f"{paused}, volume {round(self.chain.volume * 100)}%, loop {self.queue.loop.value}"
        )

    def _call(self) -> CallContext:
        if self.call is None:
            raise CommandError("I am not in this room's call.")
        return self.call

    def _player(self) -> Player:
        if self.player is None:
            raise CommandError("I am not in this room's call.")
        return self.player

    def _playing(self) -> Player:
        player = self._player()
        if player.state is State.IDLE or self.queue.current is None:
            raise CommandError("Nothing is playing.")
        return player


#: The longest file name or URL !play reads (long signed URLs fit; a pasted page does not).
MAX_SOURCE_CHARS = 2000


def checked_source(what: str) -> str:
    """``what`` if it can name a file or a URL; CommandError (never echoing it) if not."""
    if len(what) > MAX_SOURCE_CHARS:
        raise CommandError(
            f"That is too long for a file name or a URL (over {MAX_SOURCE_CHARS} characters)."
        )
    # NUL and other control characters are in no URL and no sane file name, and the file
    # system refuses some of them with errors of its own.
    if any(unicodedata.category(c) == "Cc" for c in what):
        raise CommandError("File names and URLs hold no control characters (tabs, NUL, ...).")
    return what


def _number(text: str, digits: int) -> int | None:
    """A whole number of at most ``digits`` decimal digits; None if not.

    ``isdecimal()``, not ``isdigit()``: that is also true of ``²`` and ``①``, which ``int()``
    refuses. Decimal digits of any script (``٣``) it reads.
    """
    return int(text) if text.isdecimal() and len(text) <= digits else None


def _shown(text: str, limit: int = 40) -> str:
    """``text`` for a reply, quoted and cut short: a reply never repeats a whole paste."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _unechoed(message: str, what: str) -> str:
    """A refusal about ``what`` with ``what`` itself cut short (sources quote it whole)."""
    what = what.strip()
    if len(what) <= 40:
        return message
    return message.replace(repr(what), _shown(what)).replace(what, _shown(what)[1:-1])


def parse_time(text: str, now: float = 0.0) -> float | None:
    """``1:30``, ``1:02:03``, ``90`` (seconds), or relative ``+15`` / ``-10``; None if not."""
    text = text.strip()
    # \d is any decimal digit, all of which int() reads; the hours are bounded because int()
    # refuses numbers of over 4,300 digits
    m = re.fullmatch(r"([+-]?)(?:(?:(\d{1,6}):)?(\d{1,2}):)?(\d+(?:\.\d+)?)", text)
    if m is None:
        return None
    sign, hours, minutes, seconds = m.groups()
    value = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)
    if (hours or minutes) and float(seconds) >= 60:
        return None
    if sign:
        value = now + value if sign == "+" else now - value
    return max(0.0, value)
