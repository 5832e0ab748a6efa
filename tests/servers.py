"""Servers the slow tests start and stop themselves: moto's S3 server, and Ray clusters of
several nodes on this machine.

Every server runs in its own process group and is ended by SIGKILL of that group: never
`ray stop`, which would end every Ray on the machine (and `gcs_server` survives a SIGTERM of
`ray start --block`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = pathlib.Path(sys.executable).parent
ROOT = pathlib.Path(__file__).resolve().parents[1]


_HANDED_OUT: set[int] = set()


def free_port(low: int = 20000, high: int = 29999) -> int:
    """A free port outside Ray's default worker range (10002-19999), never one handed out
    before in this process: the ports of one `ray start` are all free when picked, and two
    picks of the same one made a node refuse to start (node_manager = object_manager)."""
    rng = secrets.SystemRandom()
    for _ in range(100):
        port = rng.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port")


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _process_table() -> dict[int, tuple[int, int, str]]:
    """{pid: (parent pid, process group, command line)} of every process, from /proc."""
    table = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # after the command (in parentheses): state, ppid, pgrp, ...
            fields = stat[stat.rindex(")") + 2:].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            table[int(entry.name)] = (int(fields[1]), int(fields[2]),
                                      command.decode(errors="replace").strip())
        except (OSError, ValueError):
            continue
    return table


class MotoServer:
    """moto's S3 server as a separate process on 127.0.0.1 (delta-rs hangs against moto's
    in-process ThreadedMotoServer); ``env`` is what a client needs to reach it."""

    def __init__(self):
        # a port from the kernel's ephemeral range: free_port's range is where the test Ray
        # clusters put their own servers
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # its request log goes to a file: a pipe nobody reads would block it when full
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(port, 30)
        self.check()  # another process may have answered on that port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                    "AWS_ALLOW_HTTP": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def check(self) -> None:
        """Raise, with the end of its log, if the server is no longer running."""
        if self.process.poll() is not None:
            tail = pathlib.Path(self.log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto's server exited ({self.process.returncode}):\n{tail}")

    def stop(self) -> None:
        _kill_group(self.process.pid)
        self.process.wait(10)
        self.log.close()
        os.unlink(self.log.name)


@dataclasses.dataclass
class Node:
    """One Ray node: its `ray start` process group and its own disk (cache, temp)."""

    name: str
    pgid: int
    folder: pathlib.Path
    cpus: int

    def processes(self) -> dict[int, str]:
        """{pid: command line} of this node's processes: those of its `ray start` process
        group and their descendants (Ray puts each worker in a process group of its own)."""
        table = _process_table()
        mine = {pid for pid, (_, pgid, _) in table.items() if pgid == self.pgid}
        grown = True
        while grown:
            more = {pid for pid, (ppid, _, _) in table.items() if ppid in mine} - mine
            mine |= more
            grown = bool(more)
        return {pid: table[pid][2] for pid in mine}

    def running(self) -> list[str]:
        """What this node's Ray workers are doing now: their titles (``ray::<task>``)."""
        return [title for title in self.processes().values()
                if title.startswith("ray::") and not title.startswith("ray::IDLE")]

    def alive(self) -> bool:
        return bool(self.processes())


class RayCluster:
    """A Ray head with no CPUs for tasks (the job drivers run there) and the dashboard on
    127.0.0.1 with token auth, plus worker nodes that each have their own GENRES_CACHE and temp
    folder, so nothing passes between nodes through the local disk."""

    def __init__(self, env: dict | None = None, head_args: tuple[str, ...] = (),
                 gcs: int | None = None):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket
        # paths must stay short
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, **(env or {}),
                    # job entrypoints run `python` from this venv
                    "PATH": f"{BIN}:{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "TF_USE_LEGACY_KERAS": "1",
                    # a lost node is noticed in ~3 s, not Ray's default ~30 s
                    "RAY_health_check_initial_delay_ms": "1000",
                    "RAY_health_check_period_ms": "1000",
                    "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[Node] = []
        self.gcs = gcs or free_port()
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.head = self._start("head", 0, ["--head", f"--port={self.gcs}",
                                            "--include-dashboard=true",
                                            "--dashboard-host=127.0.0.1",
                                            f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                                            f"--ray-client-server-port={free_port()}",
                                            *head_args])
        self._wait_for_jobs_api(90)

    def _start(self, name: str, cpus: int, args: list[str]) -> Node:
        folder = self.root / name
        (folder / "cache").mkdir(parents=True)
        (folder / "tmp").mkdir()
        env = {**self.env, "GENRES_CACHE": str(folder / "cache"), "TMPDIR": str(folder / "tmp")}
        command = [str(BIN / "ray"), "start", *args, f"--num-cpus={cpus}",
                   "--object-store-memory=500000000", f"--temp-dir={folder / 'ray'}",
                   f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                   f"--dashboard-agent-listen-port={free_port()}",
                   f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}",
                   f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        # Not --block: `ray start` returns once the node has joined. Its processes stay in the
        # group it was started in, which kill() ends.
        process = subprocess.Popen(command, env=env, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        node = Node(name, process.pid, folder, cpus)
        self.nodes.append(node)
        output, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"ray start of node {name} failed:\n{output[-3000:]}")
        return node

    def add_node(self, name: str, cpus: int = 1) -> Node:
        return self._start(name, cpus, [f"--address=127.0.0.1:{self.gcs}"])

    def kill(self, node: Node) -> None:
        """Lose ``node`` as a machine is lost: SIGKILL to its raylet and every process on it
        (again until none is left: the raylet may have started a worker meanwhile)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            processes = node.processes()
            if not processes:
                return
            for pid in processes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _request(self, path: str):
        request = urllib.request.Request(f"{self.dashboard}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def _wait_for_jobs_api(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while True:
            try:
                self._request("/api/jobs/")
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def alive_nodes(self) -> list[dict]:
        """The nodes the head counts as alive: node_id, resources (total), is_head."""
        nodes = self._request("/nodes?view=summary")["data"]["summary"]
        return [{"node_id": n["raylet"]["nodeId"], "resources": n["raylet"].get("resourcesTotal", {}),
                 "is_head": n["raylet"].get("isHeadNode", False)}
                for n in nodes if n["raylet"]["state"] == "ALIVE"]

    def alive_cpus(self) -> float:
        """CPUs of the nodes the head counts as alive."""
        nodes = self._request("/nodes?view=summary")["data"]["summary"]
        return sum(n["raylet"].get("resourcesTotal", {}).get("CPU", 0) for n in nodes
                   if n["raylet"]["state"] == "ALIVE")

    def submit(self, module: str, args: list[str], *, env_vars: dict, submission_id: str,
               timeout: float = 600) -> subprocess.Popen:
        """``ray job submit --working-dir <repo> -- python -m <module> <args>``, as a user runs
        it: the job's environment (object store credentials) in its runtime env."""
        command = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard,
                   "--working-dir", str(ROOT), "--submission-id", submission_id,
                   "--runtime-env-json", json.dumps({"env_vars": env_vars}),
                   "--", "python", "-m", module, *args]
        return subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def job_id(self, submission_id: str) -> str:
        return self._request(f"/api/jobs/{submission_id}")["job_id"]

    def actors(self, job_id: str) -> list[dict]:
        """The actors of a job, alive or dead (Ray's state API): class_name, node_id, state."""
        listed = self._request("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
        return [a for a in listed if a.get("job_id") == job_id]

    def placement_groups(self) -> list[dict]:
        """Every placement group of the cluster (Ray's state API): state, job_id, bundles."""
        return self._request("/api/v0/placement_groups?limit=10000&detail=1")["data"][
            "result"]["result"]

    def job_status(self, submission_id: str) -> str:
        return self._request(f"/api/jobs/{submission_id}")["status"]

    def job_logs(self, submission_id: str) -> str:
        return self._request(f"/api/jobs/{submission_id}/logs")["logs"]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)


class AutoscalingRayCluster(RayCluster):
    """A RayCluster whose worker nodes Ray's autoscaler launches and terminates: the head
    (0 CPUs) runs the autoscaler with a node provider that starts each node as local raylets
    (``fake_nodes.LocalNodes``, Ray's fake multi-node provider with a disk per node).

    ``node_types``: the autoscaler's ``available_node_types`` for workers, e.g.
    ``{"cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}}``.
    """

    def __init__(self, node_types: dict, *, idle_timeout_s: float = 10,
                 env: dict | None = None):
        self.config_root = pathlib.Path(tempfile.mkdtemp(prefix="as", dir="/tmp"))
        gcs = free_port()
        types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                      "max_workers": 0}}
        for name, node_type in node_types.items():
            types[name] = {"node_config": {}, "min_workers": 0, **node_type}
        config = {
            "cluster_name": "genres-test", "max_workers": sum(
                t.get("max_workers", 0) for t in node_types.values()),
            "provider": {"type": "external", "module": "fake_nodes.LocalNodes",
                         "gcs_address": f"127.0.0.1:{gcs}",
                         "nodes_root": str(self.config_root), "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": []}
        path = self.config_root / "autoscaler.yaml"
        path.write_text(json.dumps(config))
        tests = str(pathlib.Path(__file__).resolve().parent)
        env = {**(env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
        super().__init__(env, head_args=(f"--autoscaling-config={path}",), gcs=gcs)

    def events(self) -> list[dict]:
        """The provider's launches and terminations so far: time, event, node_id, node_type."""
        path = self.config_root / "nodes.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.config_root, ignore_errors=True)
