"""The Kubernetes client's expected failures (``agent/kube/client.py``, ``agent/kube/kubeconfig.py``,
``agent/kube/credentials.py``, ``agent/kube/exec.py``): each is one line, never a credential."""


from __future__ import annotations

from typing import Optional

from agent.base.errors import AgentError


class KubeconfigError(AgentError):
    """The kubeconfig is missing, invalid, or asks for something the agent does not do."""


class KubeError(AgentError):
    """The API server did not do what was asked."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class KubeUnauthorized(KubeError):
    pass


class KubeForbidden(KubeError):
    pass


class KubeNotFound(KubeError):
    pass


class ExecPluginError(KubeError):
    """The exec credential plugin could not give a credential."""
