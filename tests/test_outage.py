"""Homeserver outages mid-call: Synapse SIGKILLed and started again on the same data, while the
bot records an encrypted call (real Synapse, dev SFU, matrix-js-sdk + livekit participant)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.app import REJOINED_NOTICE
from bot.devsfu.server import DevSfu
from tests import lkclient
from tests.peer import wait_until
from tests.synapse import Synapse
from tests.test_media import TIMEOUT, heard, scene


@pytest.fixture
def own_synapse(tmp_path: Path) -> Iterator[Synapse]:
    """A homeserver of this test's own: it is killed, which the shared one must never be."""
    server = Synapse(tmp_path / "synapse")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_sfu(own_synapse: Synapse, netns_addrs: tuple[str, str]) -> AsyncIterator[DevSfu]:
    server = DevSfu(homeserver=own_synapse.url)
    await server.start(netns_addrs[0])
    yield server
    await server.stop()


#: After the homeserver is back, the memberships and keys are exchanged again within this many
#: seconds on a loaded machine; alice's media may be silent only then.
REJOIN_S = 15


def _bot_memberships(members: list, bot: str) -> int:
    return sum(1 for m in members if m.user_id == bot)


@pytest.mark.timeout(600)  # an outage and a Synapse restart on a loaded machine
async def test_the_bot_rides_out_homeserver_outages_and_keeps_recording(
    own_synapse: Synapse, own_sfu: DevSfu, tmp_path: Path
) -> None:
    from plugins.recorder.plugin import Recorder, RecorderConfig
    from tests.test_recorder import decode, level

    recorder = Recorder(RecorderConfig(upload_mixed=False))
    # Element Call's MembershipManager gives up after 11 network errors a second apart: its
    # user drops out of a call whose homeserver is gone for longer (the bot would then leave
    # 30 s after her, rightly). Here alice's client keeps retrying, as the bot does.
    keep_trying = {"maximumNetworkErrorRetryCount": 1000}
    async with scene(own_synapse, own_sfu, tmp_path, (recorder,), keep_trying) as s:
        posted: list[str] = []
        send = s.bot.matrix.send

        async def recording_send(room_id: str, content: dict) -> str:
            posted.append(content.get("body", ""))
            return await send(room_id, content)

        s.bot.matrix.send = recording_send  # type: ignore[method-assign]
        tone = lkclient.Tone(440)
        await tone.publish(s.lk)
        await wait_until(lambda: heard(s.listener, s.alice.user_id, 440), TIMEOUT, "440 Hz")
        await recorder.start()
        started = time.monotonic()
        sync = s.bot.matrix.sync_task
        assert sync is not None
        back: list[float] = []  # when the homeserver answered again, in recording seconds

        # Longer than the 10 s delayed leave. A second, 40 s outage right after this one does not
        # get the bot's membership back (found here, not fixed yet: see the issue 18 note).
        for outage_s in (15.0, 40.0):
            own_synapse.kill()
            await wait_until(lambda: s.bot.matrix.down_since is not None, TIMEOUT, "the outage")
            health = s.bot.metrics.health()
            assert health == (True, health[1]) and health[1]["status"] == "degraded"
            await asyncio.sleep(outage_s)
            # Media goes on over the SFU while Matrix is down.
            assert heard(s.listener, s.alice.user_id, 440)
            assert not sync.done()
            await asyncio.to_thread(own_synapse.start)
            await wait_until(lambda: s.bot.matrix.down_since is None, 120, "the reconnection")
            back.append(time.monotonic() - started)
            assert s.bot.metrics.health()[1]["status"] == "ok"
            # Back in the call: exactly one membership of the bot, and alice's.
            await wait_until(
                lambda: (
                    s.session.is_joined
                    and _bot_memberships(s.session.memberships, s.bot.matrix.user_id) == 1
                    and _bot_memberships(s.session.memberships, s.alice.user_id) == 1
                ),
                120,  # a loaded machine restarts Synapse slowly
                f"both memberships after the {outage_s:g} s outage",
            )
        # The outage outlasted the delayed leave: the homeserver sent it, the bot re-joined and
        # said so.
        await wait_until(lambda: REJOINED_NOTICE in posted, 120, "the re-join notice")
        await wait_until(lambda: heard(s.listener, s.alice.user_id, 440), TIMEOUT, "440 Hz")
        await recorder.stop()
        recorded_s = time.monotonic() - started
        await tone.stop()
    (folder,) = [p for p in (tmp_path / "data" / "calls").glob("*/*") if p.is_dir()]
    localpart = s.alice.user_id[1:].split(":")[0]
    alice = next(p for p in folder.iterdir() if p.name.startswith(localpart))
    samples = decode(alice)
    # One file across both outages, as long as the recording, with alice's tone throughout the
    # outages (media does not need the homeserver). Only once it answers again may there be
    # a gap: the homeserver then sends the delayed leaves of the bot *and* of alice's client,
    # both send their memberships again and alice a new key, and until then her media is
    # not a member's (seen in CI: a whole second silent at 20 s, 2 s after the first outage).
    assert samples.size / 48_000 > recorded_s - 3
    seconds = [samples[i : i + 48_000] for i in range(0, samples.size - 48_000, 48_000)]
    silent = [t for t, w in enumerate(seconds) if not level(w, 440) > 10 * level(w, 660)]
    unexplained = [t for t in silent if not any(b - 1 <= t <= b + REJOIN_S for b in back)]
    assert not unexplained, f"no tone at {unexplained} s (the homeserver was back at {back} s)"
    assert len(silent) <= len(back) * REJOIN_S / 2, f"silent seconds: {silent}"
