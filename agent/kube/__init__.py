"""The Kubernetes API with the node's kubelet credentials: the client (``client``, ``http``),
kubeconfig and credentials (``kubeconfig``, ``credentials``, ``exec``, ``tokens``), errors, and this
node's Node (``node``: its name, its read).
"""
