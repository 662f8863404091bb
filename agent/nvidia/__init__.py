"""NVIDIA software on the node: the Container Toolkit's config (``toolkit``), the kernel driver
(``driver``), the one ``nvidia-smi`` query (``smi``).
"""
