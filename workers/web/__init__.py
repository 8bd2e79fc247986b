"""The web room: `dmd serve`'s app (WebRTC sessions in a browser, the live dashboard).

- `app`: the aiohttp application, its routes, access and limits, and `start_site`
- `hub`: one Redis subscription to the estimates, fanned out to the peers and dashboards
- `peer`: one WebRTC peer: its connection, its capture session, its data channel
- `source`: a peer's tracks as a capture source (`PeerSource`)
- `client`: a WebRTC client in Python (tests, `bench/webrtc.py`, `dmd webrtc-client`)
- `static/`: the pages, scripts and style sheet

A browser peer is a capture source, so this room may use `workers.capture`; it uses no other room.
"""
