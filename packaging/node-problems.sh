#!/bin/bash
# The nodes whose gpu-node-agent health is not "healthy", one tab-separated line each: node, health,
# and the failing and warning checks from the <prefix>/report annotation (compact JSON).
#   packaging/node-problems.sh [kubectl get options]
# Needs jq. Nodes without the agent show "no report". GNA_ANNOTATION_PREFIX selects a custom
# report.annotation_prefix.
set -euo pipefail
prefix=${GNA_ANNOTATION_PREFIX:-gpu-node-agent}
kubectl get nodes -o json "$@" | jq -r --arg p "$prefix" '
  .items[]
  | (.metadata.annotations // {}) as $a
  | select($a[$p + "/health"] != "healthy")
  | [ .metadata.name,
      ($a[$p + "/health"] // "no report"),
      (($a[$p + "/report"] // "{}") | fromjson
        | [ .checks[]? | select(.status == "fail" or .status == "warn") | "\(.name): \(.message)" ]
        | join("; ")) ]
  | @tsv'
