"""The view room: estimates shown to a person.

- `watch`: `dmd watch`, the live terminal view (or JSON lines) of one or every session
- `timeline`: a session's timeline as a PNG and a self-contained HTML page
"""
