"""A node provider for Ray's autoscaler that launches worker "nodes" as local raylets, for the
autoscaling cluster of the tests (``servers.AutoscalingRayCluster``).

Ray's own ``fake_multinode`` provider does this, but its type loads a default config that is
not in the wheel (``fake_multi_node/example.yaml``), and its nodes share the head's disk. This
is the same provider loaded as ``type: external``, each node with its own GENRES_CACHE, temp
folder and Ray temp dir (as a machine of its own would have), and a record of every launch and
termination in ``nodes.jsonl`` beside them, which the tests read.

The autoscaler's monitor imports it (the head is started with this folder on PYTHONPATH).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from unittest import mock

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

RAY_PARAMS = ray._private.parameter.RayParams


class LocalNodes(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose nodes each get a folder under ``provider.nodes_root``."""

    def __init__(self, provider_config: dict, cluster_name: str):
        super().__init__(provider_config, cluster_name)
        self.root = pathlib.Path(provider_config["nodes_root"])

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources,
                                               labels):
        # the autoscaler launches from several threads: one node at a time, as the parent does
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            folder = self.root / f"{node_type}-{self._next_node_id + 1}"
            (folder / "cache").mkdir(parents=True, exist_ok=True)
            (folder / "tmp").mkdir(exist_ok=True)
            before = set(self._nodes)
            # the raylet passes its environment on to the workers it starts; Ray's own folder
            # of the node (sessions, a job's working_dir unpacked) is its own too: shared, a
            # node set up or taken down removed the files of a job running on another one
            with mock.patch.dict(os.environ, GENRES_CACHE=str(folder / "cache"),
                                 TMPDIR=str(folder / "tmp")), \
                    mock.patch.object(ray._private.parameter, "RayParams",
                                      functools.partial(RAY_PARAMS, temp_dir=str(folder / "r"))):
                super()._create_node_with_resources_and_labels(node_config, tags, count,
                                                               resources, labels)
            for node_id in set(self._nodes) - before:
                self._record("launched", node_id, node_type, resources)

    def terminate_node(self, node_id):
        with self.lock:
            node_type = self._nodes.get(node_id, {}).get("tags", {}).get(TAG_RAY_USER_NODE_TYPE)
            super().terminate_node(node_id)
            self._record("terminated", node_id, node_type, {})

    def _record(self, event: str, node_id: str, node_type: str | None, resources: dict):
        with open(self.root / "nodes.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "event": event, "node_id": node_id,
                                "node_type": node_type, "resources": resources}) + "\n")
