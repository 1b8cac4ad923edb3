"""Renders, lints and validates a Helm chart with the real Helm engine, for the chart tests.

Uses the `helm-python-sdk` package (module `helm_python`), which embeds Helm's Go SDK: no
`helm` binary, no cluster. Reads one JSON request on stdin and writes one JSON answer:

  {"action": "render", "chart": DIR, "values": {...}, "name": R, "namespace": NS}
      -> {"manifests": {"plexus/templates/x.yaml": "...", ...}}
  {"action": "lint", "chart": DIR, "values": {...}, "namespace": NS, "kubeVersion": "v1.32.0"}
      -> Helm's lint report {"messages": [...], "errors": [...], ...}
  {"action": "validate", "chart": DIR, "values": {...}}
      -> {"valid": true} or {"valid": false, "error": "..."}

A Helm error on render is {"error": "..."}; anything else (bad request, missing package)
exits non-zero with the reason on stderr.
"""

import json
import sys

import helm_python as helm


def main() -> int:
    request = json.load(sys.stdin)
    action = request["action"]
    chart_dir = request["chart"]
    values = request.get("values") or {}
    if action == "render":
        chart = helm.Chart.load(chart_dir)
        try:
            manifests = chart.render(
                values,
                name=request.get("name", "plexus"),
                namespace=request.get("namespace", "plexus"),
                is_install=True,
            )
        except helm.HelmError as e:
            answer = {"error": str(e)}
        else:
            answer = {"manifests": manifests}
    elif action == "lint":
        answer = helm.lint(
            chart_dir,
            values,
            strict=True,
            namespace=request.get("namespace", "plexus"),
            kube_version=request.get("kubeVersion"),
        )
    elif action == "validate":
        chart = helm.Chart.load(chart_dir)
        try:
            chart.validate_schema(values)
        except helm.HelmError as e:
            answer = {"valid": False, "error": str(e)}
        else:
            answer = {"valid": True}
    else:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
