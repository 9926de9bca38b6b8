"""Helpers of the flow-building API (``tags``, ``apply_map``, ``as_task``); the public names
are re-exported by :mod:`ferroflow`."""
