#!/bin/sh
# Every node's gpu-node-agent health, from the annotation the agent publishes (<prefix>/health):
#   packaging/node-health.sh [kubectl get options, e.g. -l node.kubernetes.io/instance-type=p5.48xlarge]
# Nodes without the agent show <none>. With the default report.annotation_prefix this is the
# one-liner
#   kubectl get nodes -o custom-columns='NODE:.metadata.name,HEALTH:.metadata.annotations.gpu-node-agent/health'
# In kubectl's JSONPath, "-" and "/" in a key need no escaping but "." does ("\."): set
# GNA_ANNOTATION_PREFIX=gpu.example.com for a custom prefix and this script escapes it.
set -eu
prefix=${GNA_ANNOTATION_PREFIX:-gpu-node-agent}
key=$(printf '%s' "$prefix" | sed 's/\./\\./g')/health
exec kubectl get nodes -o "custom-columns=NODE:.metadata.name,HEALTH:.metadata.annotations.$key,INSTANCE-TYPE:.metadata.labels.node\\.kubernetes\\.io/instance-type,ZONE:.metadata.labels.topology\\.kubernetes\\.io/zone" "$@"
