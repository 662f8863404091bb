"""containerd: its config file and imports (``files``), the ``containerd-config`` resource and its
reconcile (``config``), the CRI plugins the running daemon reports (``cri``).
"""
