"""The API's service functions: what a view calls after loading its schema.

Each takes plain arguments (the caller's ``Identity`` or tenant first), never ``flask.request``,
and returns plain data or raises ``ApiError``. They compose ``auth`` and ``streaming``; the views in
``api.routes`` stay a schema in, one call, a schema out.
"""
