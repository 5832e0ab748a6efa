import pathlib

import yaml


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
