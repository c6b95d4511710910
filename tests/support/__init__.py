"""What every test shares: servers, launchers, waits and readers (fixtures live in conftest.py).

- ``config``: the test secret and password, the in-process app config and the live server's env.
- ``waiting``: ``wait_until``, the one way a test waits for a state.
- ``processes``: ``stop_process`` (by PID), a ``redis-server`` on a free port, gunicorn workers
  read from ``/proc``.
- ``live``: the gunicorn launcher, ``LiveServer`` and the pool that shares one live server
  between tests (reset between them).
- ``hub``: reading ``/v1/events`` (httpx-sse or the Flask test client) and comparing readings.
- ``tokens``: bearer headers, forged and tampered JWTs, the auth error envelope.
- ``browser``: Debian's Chromium, logging in through the chat page, the two viewports, what a
  page logged (``PageWatch``) and sideways overflow.
- ``smollm2``: the embedded model's server, started once per session (a fixture).
- ``docs``: the runnable examples of ``docs/*.md``.
"""
