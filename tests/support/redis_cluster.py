"""A Redis Cluster of the test's own: N masters and R replicas per master, each a real
redis-server process on a free port in a temporary directory, made into a cluster by
`redis-cli --cluster create`, for tests of REDIS_MODE=cluster and of shard failovers (SIGKILL a
master, watch its replica take over).

Settings chosen for tests, not production:
- `cluster-node-timeout` is small (NODE_TIMEOUT_MS unless told): a killed master is marked
  failing after about that long, and its replica is promoted about a second later.
- `cluster-replica-validity-factor 0`: a replica always fails over, however long ago it last
  heard from its master (a loaded machine must not make a failover test flaky).
- `cluster-require-full-coverage` stays `yes`, Redis's default and what production runs: a
  failover needs nothing else, the cluster refuses commands (CLUSTERDOWN) only between the
  moment the dead master is marked failing and its replica's promotion. `full_coverage=False`
  is for tests that want the other shards to keep serving in that window, or that kill a master
  with no replica (its slots then stay uncovered and, with `yes`, so would the whole cluster).
- Each node's cluster bus port is a free port of its own (`cluster-port`), not port + 10000,
  which may be taken or above 65535.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from fastapi_channels.testing import free_port

__all__ = ["NODE_TIMEOUT_MS", "SLOTS", "ClusterDeployment", "Node", "NodeView"]

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
START_TIMEOUT = 20.0  # the processes up, the cluster created and agreed on
CREATE_TIMEOUT = 30.0  # redis-cli --cluster create, which waits for the nodes to meet
LOG_TAIL = 15  # lines of each node's log in a timeout's error


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: `free_port()` may give a port twice while nothing holds it."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass(frozen=True)
class NodeView:
    """One node as another node's CLUSTER NODES shows it (failing and unknown nodes left out)."""

    port: int
    role: str  # "master" or "replica"
    master_port: int | None  # a replica's master
    slots: frozenset[int]


class Node:
    """One redis-server process of the cluster; its port is the cluster's name for it."""

    def __init__(
        self, binary: str, ports: tuple[int, int], directory: Path, timeout_ms: int, full_coverage: bool
    ) -> None:
        self.binary = binary
        self.port, self.bus_port = ports
        self.log = directory / f"node-{self.port}.log"
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "cluster-enabled": "yes",
            "cluster-port": str(self.bus_port),
            "cluster-config-file": str(directory / f"nodes-{self.port}.conf"),
            "cluster-node-timeout": str(timeout_ms),
            "cluster-require-full-coverage": "yes" if full_coverage else "no",
            "cluster-replica-validity-factor": "0",
            "save": "",
            "appendonly": "no",
            "dir": str(directory),
            "dbfilename": f"dump-{self.port}.rdb",
            "repl-diskless-sync-delay": "0",  # a replica's first sync at once, not after 5 s
            "enable-debug-command": "local",
            "loglevel": "notice",  # failover steps are logged at this level
            "logfile": str(self.log),
        }
        self.args = [part for option, value in options.items() for part in (f"--{option}", value)]
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Node {self.address}{'' if self.alive else ' (dead)'}>"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (again, after `kill`: it rejoins with the cluster config it saved)."""
        self.process = subprocess.Popen(
            [self.binary, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self) -> redis.Redis:
        """A plain (not cluster-aware) client of this node only, for CLUSTER and INFO commands."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def ping(self) -> bool:
        """Whether it answers; fails at once if the process is gone (a port taken meanwhile?)."""
        if not self.alive:
            raise RuntimeError(f"{self} exited (code {self.process and self.process.poll()}):\n{self.tail()}")
        with self.client() as client:
            return bool(client.ping())

    def cluster_info(self) -> dict[str, str]:
        with self.client() as client:
            info: dict[str, str] = client.execute_command("CLUSTER INFO")  # parsed by redis-py
        return info

    def view(self) -> frozenset[NodeView]:
        """The cluster as this node sees it: the nodes it believes healthy, their roles and slots."""
        with self.client() as client:
            # Parsed by redis-py: "ip:port" -> that line's fields.
            rows: dict[str, dict[str, Any]] = client.execute_command("CLUSTER NODES")
        port_of = {row["node_id"]: int(address.rsplit(":", 1)[1]) for address, row in rows.items()}
        views = set()
        for address, row in rows.items():
            flags = set(row["flags"].split(","))
            if flags & {"fail", "fail?", "handshake", "noaddr"}:
                continue
            slots: set[int] = set()
            for first, *last in row["slots"]:  # ["0", "5460"] or ["5461"]
                slots.update(range(int(first), int(last[0] if last else first) + 1))
            replica = "slave" in flags
            views.add(
                NodeView(
                    port=int(address.rsplit(":", 1)[1]),
                    role="replica" if replica else "master",
                    master_port=port_of.get(row["master_id"]) if replica else None,
                    slots=frozenset(slots),
                )
            )
        return frozenset(views)

    def replication_up(self) -> bool:
        """For a replica: whether its link to its master is up (a master: always)."""
        with self.client() as client:
            info = client.info("replication")
        return bool(info.get("role") == "master" or info.get("master_link_status") == "up")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no data kept (nothing is persisted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as error:
            text = [f"(no log: {error})"]
        return "\n".join(f"  {line}" for line in text)

    def __del__(self) -> None:  # last resort if a test crashed before teardown
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)


class ClusterDeployment:
    """`masters` masters with `replicas` replicas each; `start()` returns once every node says
    `cluster_state:ok`, all agree on who serves which slot, and every replica is in sync."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        full_coverage: bool = True,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError(
                "redis-server and redis-cli are not installed: `apt-get install redis-server` "
                "(./run test does it)"
            )
        self.masters_count = masters
        self.replicas_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="fc-cluster-"))
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)
        self.nodes = [
            Node(binary, (ports[2 * i], ports[2 * i + 1]), self.dir, node_timeout_ms, full_coverage)
            for i in range(count)
        ]
        self.topology: frozenset[NodeView] = frozenset()  # as of the last `wait_ok`
        self.why_not = ""  # why the last `ok()` / `failed_over()` was false, for error messages

    @property
    def addresses(self) -> list[str]:
        """Every node's `host:port`, alive or not (startup nodes for a cluster client)."""
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        """`redis://host:port` of a live node: enough for a cluster client to find the rest."""
        node = next((node for node in self.nodes if node.alive), self.nodes[0])
        return f"redis://{node.address}"

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def masters(self) -> list[Node]:
        """The masters as of the last `wait_ok` / `wait_for_failover`, in slot order."""
        views = sorted(
            (view for view in self.topology if view.role == "master"),
            key=lambda v: min(v.slots, default=SLOTS),
        )
        return [self.node(view.port) for view in views]

    def replicas_of(self, master: Node) -> list[Node]:
        """`master`'s replicas as of the last `wait_ok` / `wait_for_failover`."""
        return [self.node(view.port) for view in self.topology if view.master_port == master.port]

    def slots_of(self, master: Node) -> frozenset[int]:
        """The slots `master` served as of the last `wait_ok` / `wait_for_failover`."""
        return next((view.slots for view in self.topology if view.port == master.port), frozenset())

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                self._until(node.ping, 10, f"{node} to answer PING")
            self._create()
            self.wait_ok(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        command = [
            "redis-cli",
            "--cluster",
            "create",
            *self.addresses,
            "--cluster-replicas",
            str(self.replicas_count),
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(command, capture_output=True, timeout=CREATE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"`redis-cli --cluster create` did not finish in {CREATE_TIMEOUT:g}s\n{self.logs()}"
            ) from error
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(
                f"`{' '.join(command)}` failed ({result.returncode}):\n{output}\n{self.logs()}"
            )

    def agreed_view(self) -> frozenset[NodeView] | None:
        """The cluster as every live node sees it, if they all say `cluster_state:ok`, see the
        same healthy nodes (every live node, no dead one) serving the same slots, and every
        replica is in sync; else None (and `why_not` says why)."""
        view, self.why_not = self._agreement([node for node in self.nodes if node.alive])
        return view

    @staticmethod
    def _agreement(live: list[Node]) -> tuple[frozenset[NodeView] | None, str]:
        for node in live:
            state = node.cluster_info().get("cluster_state")
            if state != "ok":
                return None, f"{node} says cluster_state:{state}"
        views = {node: node.view() for node in live}
        if len(set(views.values())) != 1:
            return None, f"the nodes disagree: {views}"
        view = views[live[0]]
        if {entry.port for entry in view} != {node.port for node in live}:
            return None, f"the nodes see {sorted(entry.port for entry in view)} healthy"
        for node in live:
            if not node.replication_up():
                return None, f"{node}'s link to its master is down"
        return view, ""

    def ok(self) -> bool:
        """Whether every node is alive, `agreed_view()` holds and all 16384 slots are served;
        if so, `topology` is updated. A predicate for `eventually`."""
        if not all(node.alive for node in self.nodes):
            return False
        view = self.agreed_view()
        if view is None:
            return False
        served = sum(len(entry.slots) for entry in view)
        if served != SLOTS:
            self.why_not = f"{served} slots served"
            return False
        self.topology = view
        return True

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for `ok()`: after `start`, after `restart`."""
        self._until(self.ok, timeout, "every node ok, agreed on the slots, replicas in sync")

    def migrate_slot(
        self, slot: int, target: Node, between_batches: Callable[[], None] = lambda: None
    ) -> None:
        """Move `slot` to the master `target` as `redis-cli --cluster reshard` does: mark it
        importing and migrating, MIGRATE its keys a few at a time (calling `between_batches`
        after each: a pause, so clients meet the half-moved slot), then give it to `target`
        on every master. Waits until all nodes agree."""
        source = self.start_migration(slot, target)
        with source.client() as old:
            while keys := old.execute_command("CLUSTER GETKEYSINSLOT", slot, 3):
                self.move_keys(source, target, keys)
                between_batches()
        self.finish_migration(slot, target)

    def start_migration(self, slot: int, target: Node) -> Node:
        """Mark `slot` importing on `target` and migrating on its master; returns that master."""
        source = next(master for master in self.masters() if slot in self.slots_of(master))
        if source is target:
            raise ValueError(f"slot {slot} is on {target} already")
        with source.client() as old, target.client() as new:
            new.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", old.execute_command("CLUSTER MYID"))
            old.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", new.execute_command("CLUSTER MYID"))
        return source

    @staticmethod
    def move_keys(source: Node, target: Node, keys: list[str]) -> None:
        with source.client() as old:
            old.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, target: Node) -> None:
        """Give `slot` to `target` on every master (its keys moved) and wait for agreement."""
        with target.client() as new:
            target_id = new.execute_command("CLUSTER MYID")
        for master in self.masters():
            with master.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self._until(
            lambda: self.ok() and slot in self.slots_of(target), START_TIMEOUT, f"slot {slot} on {target}"
        )

    def kill(self, node: Node) -> None:
        """SIGKILL one node."""
        node.kill()

    def restart(self, node: Node, timeout: float = START_TIMEOUT) -> None:
        """Start a killed node again and wait until the cluster is whole (a master whose replica
        took over comes back as that replica's replica, with no data)."""
        node.kill()
        node.start()
        self._until(node.ping, 10, f"{node} to answer PING")
        self.wait_ok(timeout)

    def failed_over(self, old_master: Node) -> Node | None:
        """The replica of (killed) `old_master` that now serves all its slots, once the live
        nodes agree and say `cluster_state:ok` (`topology` is then updated); else None. A
        predicate for `eventually`."""
        slots = self.slots_of(old_master)
        replicas = {node.port for node in self.replicas_of(old_master)}
        view = self.agreed_view()
        if view is None:
            return None
        for entry in view:
            if entry.port in replicas and entry.role == "master" and slots <= entry.slots:
                self.topology = view
                return self.node(entry.port)
        self.why_not = "no replica of it serves its slots yet"
        return None

    def wait_for_failover(self, old_master: Node, timeout: float | None = None) -> Node:
        """Wait until a replica of `old_master` (killed) is promoted, holds its slots, and the
        cluster is ok again; returns the new master. The default bound leaves room for the
        failure detection (node timeout), the election (about 1 s) and a loaded machine."""
        if not self.replicas_of(old_master):
            raise ValueError(f"{old_master} has no replica to fail over to (replicas=0?)")
        bound = timeout if timeout is not None else 10 + 4 * self.node_timeout_ms / 1000
        promoted: list[Node] = []

        def done() -> bool:
            node = self.failed_over(old_master)
            if node is not None:
                promoted.append(node)
            return node is not None

        self._until(done, bound, f"a replica of {old_master} to take over its slots")
        return promoted[0]

    async def await_failover(self, old_master: Node, timeout: float | None = None) -> Node:
        """`wait_for_failover` in a thread, for a test whose event loop must keep running
        (servers of the test app in it)."""
        return await asyncio.to_thread(self.wait_for_failover, old_master, timeout)

    def logs(self) -> str:
        """The tail of every node's log, for an error message."""
        return "\n".join(f"--- {node} log ({node.log}):\n{node.tail()}" for node in self.nodes)

    def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition` (errors count as not yet) until it holds; after `timeout` seconds fail
        with the last error seen and the nodes' logs."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError) as error:
                last_error = error
                self.why_not = ""
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error is not None else ""
                detail += f" (not yet because {self.why_not})" if self.why_not else ""
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}{detail}\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
