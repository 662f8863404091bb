"""systemd over D-Bus: the one client and what it returns (``client``: ``UnitState``,
``SystemdError``), a restart that waits for its job (``jobs``: ``RestartOutcome``).
"""
