"""The KubeRay RayService carries the same, valid Serve application as configs/serve_config.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def _normalise(deployments: list[dict]) -> dict:
    keep = ("max_ongoing_requests", "max_queued_requests", "autoscaling_config", "ray_actor_options")
    return {d["name"]: {k: d[k] for k in keep if k in d} for d in deployments}


def test_rayservice_serve_config_is_valid_and_in_step():
    from ray.serve.schema import ServeDeploySchema

    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    serve_v2 = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema(**serve_v2)     # raises on anything Serve would reject
    local = yaml.safe_load((ROOT / "configs" / "serve_config.yaml").read_text())
    (app,), (local_app,) = serve_v2["applications"], local["applications"]
    assert app["import_path"] == local_app["import_path"]
    assert app["args"] == local_app["args"]
    assert _normalise(app["deployments"]) == _normalise(local_app["deployments"])


def test_rayservice_keeps_replicas_off_the_head_and_asks_for_gpus():
    spec = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
