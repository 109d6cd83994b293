"""Run a deployment and wait for it: `python deployments/run.py train-matrix/demo [--param k=json]`.

`--param params={"work": "/data/work"}` is merged into the deployment's own parameters (nested
keys too), where `prefect deployment run --param` would replace the whole `params` object.
Prints the flow run's UI address at once and its state changes; exits 0 when it completes,
1 otherwise (the UI and `prefect flow-run logs <id>` say why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

POINT_AT_STACK = "start the project's stack with `make up`, then `eval \"$(deployments/stack.sh env)\"` in this shell"


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def server_problem(api: str | None) -> str | None:
    """Why no deployment can run here, in one line (None: a server answers at `api`)."""
    if not api:
        return f"no Prefect server is configured (PREFECT_API_URL is unset): {POINT_AT_STACK}"
    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        return f"the Prefect server at {api} does not answer ({type(e).__name__}): {POINT_AT_STACK}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("deployment", help="flow-name/deployment-name")
    parser.add_argument("--param", action="append", default=[], help="name=JSON value (repeatable)")
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args()
    given = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    problem = server_problem(PREFECT_API_URL.value())
    if problem:
        print(f"run.py: {problem}", file=sys.stderr)
        return 2
    try:
        with get_client(sync_client=True) as client:
            defaults = client.read_deployment_by_name(args.deployment).parameters
    except ObjectNotFound:
        print(f"run.py: no deployment {args.deployment!r} on {PREFECT_API_URL.value()}: `make up` deploys "
              "prefect.yaml's (`prefect deploy --all`); `prefect deployment ls` lists what is there", file=sys.stderr)
        return 2
    run = run_deployment(args.deployment, parameters=merge(defaults, given), timeout=0, as_subflow=False)
    print(f"{args.deployment}: flow run {run.name} ({run.id})\n  {PREFECT_UI_URL.value()}/runs/flow-run/{run.id}",
          flush=True)
    last = None
    with get_client(sync_client=True) as client:
        while True:  # polling the state: a watch stream can drop on a busy server
            state = client.read_flow_run(run.id).state
            if state.name != last:
                print(f"  {time.strftime('%H:%M:%S')} {state.name}", flush=True)
                last = state.name
            if state.is_final():
                if not state.is_completed():
                    print(f"  {state.message}", flush=True)
                return 0 if state.is_completed() else 1
            time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
