"""Every deployment in prefect.yaml is loaded and checked: its entrypoint is a real Prefect flow, the
flow/deployment names are the ones users type, its parameters exist on the flow, and each sits on its pool
with its tags."""
import importlib
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"train/continuous": ("{{ $DOJO_TRAIN_POOL }}", "rtx4090"),
            "evaluate/checkpoint": ("{{ $DOJO_EVAL_POOL }}", "rtx3090"),
            "spar/checkpoint": ("{{ $DOJO_EVAL_POOL }}", "rtx3090"),
            "curriculum/scheduled": ("{{ $DOJO_EVAL_POOL }}", None),
            "maintenance/daily": ("{{ $DOJO_EVAL_POOL }}", None)}


def deployments():
    return yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]


def load_flow(entrypoint: str):
    path, func = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def test_every_deployment_is_a_real_flow_with_known_parameters():
    from prefect.flows import Flow

    seen = set()
    for d in deployments():
        flow = load_flow(d["entrypoint"])
        assert isinstance(flow, Flow), d["entrypoint"]
        full = f"{flow.name}/{d['name']}"
        seen.add(full)
        pool, tag = EXPECTED[full]
        assert d["work_pool"]["name"] == pool, full
        assert "CUDA_VISIBLE_DEVICES" in d["work_pool"]["job_variables"]["env"], full
        if tag:
            assert {"gpu", tag} <= set(d["tags"]), full
        signature = inspect.signature(flow.fn)
        for name in d.get("parameters") or {}:
            assert name in signature.parameters, f"{full}: parameter {name} is not on the flow"
        for schedule in d.get("schedules") or []:
            assert schedule.get("interval") or schedule.get("cron"), full
    assert seen == set(EXPECTED)


def test_pull_step_runs_from_the_repo():
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DOJO_REPO }}"}}]
