"""A real multi-node Ray cluster: a head and a second node started with `ray start` on this machine,
a campaign launched against the head with `hybridnas campaign launch --address` (as a user would),
evaluations recorded on both nodes, and a node lost mid-campaign without losing or repeating any.

Both nodes share one host name here, so the store's `worker` column ("<node id[:8]>/<pid>") is what
tells them apart. Every process a node starts is found through /proc and killed by pid, test failed
or not; `ray stop` would stop every Ray node on the machine, other sessions' included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridnas.store import EvaluationInfo, Store

BIN = Path(sys.executable).parent  # the venv's `ray` and `hybridnas` commands
START_TIMEOUT_S = 90
CAMPAIGN_TIMEOUT_S = 300

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds each node's processes in /proc"),
]

SEARCH = {"strategy": "random", "budget": 4}
# One worker per node: each node has one CPU, so one actor lands on each.
EXECUTION = {"executor": "ray", "workers": 2, "timeout_s": 120, "max_retries": 2}
HARDWARE = {"context_len": 32, "batch_size": 1, "prompt_len": 4, "decode_tokens": 4, "repeats": 1, "warmup": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, None once it is gone. The start time tells a
    process from a later one that reuses its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 on
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of `root` and every process below it (Ray's workers start sessions of their
    own, so a process group would miss them; the parent links do not)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            started[int(entry.name)] = st[1]
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in started:
            out[pid] = started[pid]
            todo.extend(children.get(pid, ()))
    return out


@dataclass
class Node:
    """One `ray start --block` process and everything it started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time of every process seen below it

    def pids(self) -> set[int]:
        """Every process of this node seen so far, live or not (its workers exit with their job)."""
        if self.proc.poll() is None:
            self.known |= _descendants(self.proc.pid)
        return set(self.known)

    def process_titled(self, prefix: str) -> int | None:
        """The pid of a live process of this node whose command line starts with `prefix`, if any."""
        for pid in sorted(self.pids()):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix.encode()):
                    return pid
            except OSError:  # exited
                continue
        return None

    def wait_started(self) -> None:
        give_up = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > give_up:
                self.kill()
                pytest.fail(f"ray node {self.name} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        self.pids()

    def kill(self) -> None:
        """SIGKILL every process of the node, as if its machine went away."""
        self.pids()
        for pid, started in sorted(self.known.items()):
            st = _stat(pid)
            if st is not None and st[1] == started:  # still that process, not a reuse of its pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)


@dataclass
class Cluster:
    tmp: Path
    env: dict[str, str]  # the cluster's auth token: every process of it, drivers too, needs it
    address: str
    nodes: list[Node] = field(default_factory=list)
    _next_worker_port: int = 10000  # each node takes the next 50 (below the kernel's ephemeral ports)

    def start_node(self, name: str, head: bool = False) -> Node:
        ports = {
            "--node-manager-port": _free_port(),
            "--object-manager-port": _free_port(),
            "--dashboard-agent-listen-port": _free_port(),
            "--dashboard-agent-grpc-port": _free_port(),
            "--runtime-env-agent-port": _free_port(),
            "--metrics-export-port": _free_port(),
            "--min-worker-port": self._next_worker_port,
            "--max-worker-port": self._next_worker_port + 49,
        }
        self._next_worker_port += 50
        args = [str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--temp-dir", str(self.tmp / name)]
        args += ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
        for flag, port in ports.items():
            args += [flag, str(port)]
        if head:
            gcs_port = int(self.address.rsplit(":", 1)[1])
            args += ["--head", "--port", str(gcs_port), "--include-dashboard", "false"]
            args += ["--dashboard-port", str(_free_port()), "--ray-client-server-port", str(_free_port())]
        else:
            args += ["--address", self.address]
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        node = Node(name, proc, log)
        self.nodes.append(node)
        node.wait_started()
        return node


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node with one CPU; tests add more nodes. Every node is killed at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="hnas-ray-"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # The head notices a lost node in about 2 s rather than 15: a node killed by one test must not
    # still count as free CPU when the next one places its workers.
    env |= {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}
    c = Cluster(tmp, env, f"127.0.0.1:{_free_port()}", _next_worker_port=10000 + secrets.randbelow(200) * 100)
    try:
        c.start_node("head", head=True)
        yield c
    finally:
        for node in reversed(c.nodes):
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def second_node(cluster: Cluster) -> Iterator[Node]:
    node = cluster.start_node(f"node{len(cluster.nodes)}")
    try:
        yield node
    finally:
        node.kill()


@dataclass
class Launch:
    """`hybridnas campaign launch` running in a subprocess against the cluster."""

    proc: subprocess.Popen[bytes]
    url: str  # its store
    log: Path  # its output

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def finish(self, *watch: Node) -> None:
        """Wait for a clean exit, noting the processes of `watch` meanwhile (its workers exit with the
        campaign, and their pids are how the test tells which node ran what)."""
        give_up = time.monotonic() + CAMPAIGN_TIMEOUT_S
        while self.proc.poll() is None:
            for node in watch:
                node.pids()
            if time.monotonic() > give_up:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"campaign did not finish in {CAMPAIGN_TIMEOUT_S}s:\n{self.output()}")
            time.sleep(0.1)
        assert self.proc.returncode == 0, self.output()


@pytest.fixture
def launch(
    cluster: Cluster, tmp_path: Path, tiny_campaign: Callable[..., dict[str, Any]]
) -> Iterator[Callable[..., Launch]]:
    """launch(**campaign changes): start the campaign; killed at the end if still running."""
    started: list[Launch] = []

    def start(**changes: object) -> Launch:
        path = tmp_path / "campaign.yaml"
        campaign = tiny_campaign("multinode", search=SEARCH, execution=EXECUTION, hardware=HARDWARE)
        path.write_text(yaml.safe_dump({**campaign, **changes}))
        url = f"sqlite:///{tmp_path / 'hnas.db'}"
        args = [str(BIN / "hybridnas"), "campaign", "launch", str(path), "--store", url, "--address", cluster.address, "--no-export"]
        log = tmp_path / "launch.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=cluster.env, cwd=tmp_path)
        started.append(Launch(proc, url, log))
        return started[-1]

    try:
        yield start
    finally:
        for run in started:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def _evaluations(url: str, name: str) -> list[EvaluationInfo]:
    with Store.open(url, create=False) as store:
        return store.evaluations(store.get_campaign(name).id)


def _node_and_pid(ev: EvaluationInfo) -> tuple[str, int]:
    assert ev.worker is not None, f"evaluation {ev.id} names no worker"
    node, _, pid = ev.worker.partition("/")
    assert len(node) == 8 and pid.isdigit(), ev.worker
    return node, int(pid)


def _check_complete(url: str, name: str, budget: int) -> list[EvaluationInfo]:
    """The campaign finished with `budget` evaluations, each done once, each naming its worker."""
    with Store.open(url, create=False) as store:
        assert store.get_campaign(name).status == "finished"
    evals = _evaluations(url, name)
    assert len(evals) == budget and all(e.status == "done" for e in evals), [(e.id, e.status, e.error) for e in evals]
    assert len({e.candidate_id for e in evals}) == budget  # nothing trained twice
    assert all(e.finished_at is not None and e.metrics for e in evals)
    for e in evals:
        _node_and_pid(e)
    return evals


def test_campaign_runs_on_both_nodes(second_node: Node, launch: Callable[..., Launch]) -> None:
    run = launch()
    run.finish(second_node)
    evals = _check_complete(run.url, "multinode", SEARCH["budget"])
    nodes = {_node_and_pid(e)[0] for e in evals}
    assert len(nodes) == 2, f"every evaluation ran on one node: {[e.worker for e in evals]}"
    on_second = [e for e in evals if _node_and_pid(e)[1] in second_node.pids()]
    assert on_second and len(on_second) < len(evals)
    assert len({e.host for e in evals}) == 1  # one machine: the host name alone cannot tell the nodes apart


def test_lost_node_mid_campaign_loses_and_repeats_nothing(second_node: Node, launch: Callable[..., Launch]) -> None:
    budget = 6
    run = launch(name="lost-node", search={"strategy": "random", "budget": budget})
    # Take the second node away while its worker is inside an evaluation (Ray titles a worker
    # process after the method it runs).
    give_up = time.monotonic() + CAMPAIGN_TIMEOUT_S
    while (busy := second_node.process_titled("ray::_EvalActor.run")) is None:
        assert run.proc.poll() is None, f"campaign ended before the second node evaluated anything:\n{run.output()}"
        assert time.monotonic() < give_up, "the second node never started an evaluation"
        time.sleep(0.05)
    running = [e.id for e in _evaluations(run.url, "lost-node") if e.status == "running"]
    second_node.kill()
    run.finish()
    evals = _check_complete(run.url, "lost-node", budget)
    # The lost evaluation went back to the queue and ran once more, on the head; nothing was
    # recorded from the lost node, and no result twice.
    assert all(_node_and_pid(e)[1] != busy for e in evals)
    assert len({_node_and_pid(e)[0] for e in evals}) == 1, [e.worker for e in evals]
    assert running and all(ev_id in {e.id for e in evals} for ev_id in running)
