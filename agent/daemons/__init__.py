"""containerd and kubelet as running daemons: the ``containerd-running``/``kubelet-running`` resource
(``units``), whether a daemon serves (``serving``), kubelet's health endpoint (``kubelet``).
"""
