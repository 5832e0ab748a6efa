import pathlib

import yaml

ROOT = pathlib.Path(__file__).parents[1]


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((pathlib.Path(__file__).parents[1] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert config["docker"]["head_image"].startswith("rayproject/ray:2.60.0-py311")


def test_cluster_yaml_keeps_token_auth_on_and_the_dashboard_private():
    config = yaml.safe_load((pathlib.Path(__file__).parents[1] / "cluster.yaml").read_text())
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "0.0.0.0" not in starts and "--dashboard-host=$(hostname -I" in starts
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in commands[-1]
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]


def test_cluster_yaml_gives_the_head_no_tasks_and_starts_every_worker_type_at_zero():
    # as the tests' clusters: the head runs drivers, dashboard and autoscaler only
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def test_a_jobs_default_bound_is_what_cluster_yaml_lets_the_autoscaler_bring_up():
    from pipeline.runtime.cluster import node_type_limits

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = dict(config["available_node_types"])
    types[config["head_node_type"]] = {**types[config["head_node_type"]], "head": True}
    # CPU work is sized to the CPU nodes (16 x 32); GPU nodes' CPUs feed their GPUs
    assert node_type_limits(types, config["max_workers"]) == (512, 4)


def test_node_type_limits():
    from pipeline.runtime.cluster import node_type_limits

    cpu = {"resources": {"CPU": 8}, "max_workers": 3}
    gpu = {"resources": {"CPU": 4, "GPU": 2}, "max_workers": 2}
    head = {"resources": {"CPU": 2}, "head": True}
    assert node_type_limits({"cpu": cpu, "gpu": gpu, "head": head}) == (26, 4)
    # the cluster's max_workers caps each type; a GPU-only cluster's CPUs are all it has
    assert node_type_limits({"cpu": cpu, "gpu": gpu}, max_workers=1) == (8, 2)
    assert node_type_limits({"gpu": gpu}) == (8, 4)
    # a type without a bound (-1 in Ray's cluster config) counts as a large, finite number
    assert node_type_limits({"cpu": {"resources": {"CPU": 1}, "max_workers": -1}})[0] >= 1000


def _kuberay(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay" / name).read_text())


def test_the_kuberay_cluster_autoscales_from_a_head_without_tasks():
    # no package ships KubeRay's CRD schema (its Go module is not on this machine's
    # registries): the fields docs/operations.md relies on, checked by hand
    cluster = _kuberay("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "TF_USE_LEGACY_KERAS", "value": "1"} in container["env"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"


def test_the_nightly_rayjob_runs_tag_on_that_cluster_bounded_by_its_size():
    from pipeline.cli import build_parser

    cluster, job = _kuberay("raycluster.yaml"), _kuberay("rayjob-tag.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert spec["jobId"] == job["metadata"]["name"]  # a fixed submission id per night
    words = spec["entrypoint"].split()
    assert words[:3] == ["python", "-m", "jobs.tag"]
    args = build_parser().parse_args(["tag", *words[3:]])  # the job's own parser accepts it
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    cpus = groups["cpu"]["maxReplicas"] * int(
        groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert (args.max_cpus, args.max_gpus, args.use_gpu) == (cpus, 0, False)
