"""The live dashboard, in one place: what a machine's tile says, how a change reaches open pages, and the socket.

- :mod:`.tiles` — the one "machines + boards + open uses → tiles" query, the state precedence, the page's context;
- :mod:`.events` — the typed events (a tile changed, a machine was heard from) and the one sender over the
  channel layer (Redis in production), used by the bridge and by portal edits alike;
- :mod:`.consumers` — the staff-only websocket that sends a snapshot on connect and forwards events.
"""
