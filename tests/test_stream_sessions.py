"""The session lifecycle in the protocol: `SessionEvent` messages, `dmd:sessions` and
`dmd:{sid}:events`, and a worker's hold on a session's start entry, on real servers."""

from __future__ import annotations

import asyncio
import time

import pytest

from stream.codec import MessageError
from stream.connection import connect
from stream.keys import ASR_GROUP, SESSIONS, SessionKeys
from stream.lifecycle import LeaseLost, SessionLease, end_session, session_events, start_session
from stream.messages import SessionEvent, decode


def test_session_keys_include_the_events_stream() -> None:
    keys = SessionKeys("alice")
    assert keys.events == "dmd:{alice}:events"
    assert keys.events in keys.all_keys()
    assert (SESSIONS, ASR_GROUP) == ("dmd:sessions", "asr")


def test_session_event_round_trips_with_its_fields() -> None:
    event = SessionEvent("alice", "end", 1_700_000_000.5, "webcam", {"fps": 30, "device": "/dev/video0",
                                                                     "tags": ["a", 1.5, None]}, t_end=12.25)
    back = decode(event.to_fields())
    assert isinstance(back, SessionEvent)
    assert back == event
    assert back.info["tags"] == ["a", 1.5, None] and back.t_end == 12.25
    start = SessionEvent.from_fields(SessionEvent("bob", "start", 1.0).to_fields())
    assert (start.source, dict(start.info), start.t_end) == ("", {}, None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"event": "pause"}, "session.event: 'pause' is not a session event: use one of start, end"),
    ({"session": "a:b"}, "session.session: session id 'a:b' contains ':'"),
    ({"t_wall": -1.0}, "session.t_wall: -1.0 is below 0.0"),
    ({"info": {"x": float("nan")}}, "session.info.x: nan is not finite"),
    ({"info": {"x": object()}}, "session.info.x: holds a object"),
    ({"info": {1: "a"}}, "session.info: has key 1, expected strings"),
    ({"t_end": float("inf")}, "session.t_end: inf is not finite"),
    ({"source": 5}, "session.source: 5 is not a string"),
])
def test_invalid_session_events_are_refused_naming_the_field(kwargs, message) -> None:
    fields = {"session": "alice", "event": "start", "t_wall": 1.0, **kwargs}
    with pytest.raises(MessageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SessionEvent(**fields)


def test_start_and_end_go_to_the_shared_stream_and_the_sessions_own(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await start_session(r, "alice", "file", {"path": "clip.mp4"})
        await start_session(r, "bob", "mic")
        await end_session(r, "alice", t_end=3.5)
        shared = [SessionEvent.from_fields(f) for _, f in await r.xrange(SESSIONS)]
        assert [(e.session, e.event) for e in shared] == [("alice", "start"), ("bob", "start"), ("alice", "end")]
        own = await session_events(r, "alice")
        assert [(e.event, e.source, e.t_end) for e in own] == [("start", "file", None), ("end", "", 3.5)]
        assert own[0].info == {"path": "clip.mp4"} and abs(own[0].t_wall - time.time()) < 60
        await r.aclose()

    asyncio.run(main())


def test_a_lease_is_renewed_by_its_owner_and_lost_to_a_claim(redis_url: str) -> None:
    async def main() -> None:
        r = connect(redis_url)
        await r.xgroup_create(SESSIONS, ASR_GROUP, id="0", mkstream=True)
        await start_session(r, "alice")
        reply = await r.xreadgroup(ASR_GROUP, "w1", {SESSIONS: ">"}, count=1)
        entry_id = reply[0][1][0][0].decode()
        lease = SessionLease(r, entry_id, "w1")
        await asyncio.sleep(0.15)
        await lease.renew()  # resets the idle time, without counting a delivery
        pending = (await r.xpending_range(SESSIONS, ASR_GROUP, entry_id, entry_id, 1))[0]
        assert pending["time_since_delivered"] < 100 and pending["times_delivered"] == 1
        # a second worker claims it (as XAUTOCLAIM would after the idle time): the first one's lease is lost
        await r.xclaim(SESSIONS, ASR_GROUP, "w2", 0, [entry_id])
        with pytest.raises(LeaseLost, match="claimed by another worker"):
            await lease.renew()
        owner = (await r.xpending_range(SESSIONS, ASR_GROUP, entry_id, entry_id, 1))[0]["consumer"]
        assert owner == b"w2"  # renewing never takes an entry back
        await r.xack(SESSIONS, ASR_GROUP, entry_id)
        with pytest.raises(LeaseLost, match="no longer pending"):
            await SessionLease(r, entry_id, "w2").renew()
        await r.aclose()

    asyncio.run(main())
