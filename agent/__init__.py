"""gpu-node-agent: keeps an EKS AL2023 NVIDIA GPU node at the stack's working defaults."""


from __future__ import annotations

__version__ = "0.1.0"
