"""A real Redis Cluster of redis-server processes on free loopback ports, with kill, failover and rejoin controls."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import redis

from devtools.ports import free_port, wait_for
from devtools.redis import RedisExitedError, RedisProcess

SLOTS = 16384


class ClusterNode(RedisProcess):
    """One redis-server of a :class:`RedisCluster`: a :class:`RedisProcess` with cluster mode on.

    It keeps its port, cluster bus port and folder (with ``nodes.conf``) across kill() and start(), so a
    restarted node rejoins the cluster under its old identity.

    Args:
        appendonly: AOF with appendfsync always, as :class:`RedisProcess`.
        node_timeout_ms: ``cluster-node-timeout``: how long a node may be unreachable before it is failed over.
        require_full_coverage: ``cluster-require-full-coverage``: refuse every key while any slot is unserved.
    """

    def __init__(self, *, appendonly: bool, node_timeout_ms: int, require_full_coverage: bool) -> None:
        port = free_port()
        # The default bus port is port + 10000, which can be taken or past 65535 for an ephemeral port.
        bus_port = free_port()
        while bus_port == port:
            bus_port = free_port()
        self.bus_port = bus_port
        super().__init__(
            appendonly=appendonly,
            port=port,
            extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus_port), "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
                # A replica must be able to take over however long ago it last heard from its master.
                "--cluster-replica-validity-factor", "0",
            ],
        )  # fmt: skip
        self.node_id = ""

    def __repr__(self) -> str:
        return f"ClusterNode(port={self.port}, id={self.node_id[:8]}, running={self.running})"

    def command(self, *args: str | int) -> object:
        """Run one command on this node alone, on a fresh connection (so restarts never leave a stale one).

        Args:
            *args: the command and its arguments.

        Returns:
            The decoded reply, unparsed beyond RESP (``CLUSTER INFO`` stays one string).
        """
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0, decode_responses=True)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def cluster_info(self) -> dict[str, str]:
        """Return ``CLUSTER INFO`` as a dict of its fields."""
        text = str(self.command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def cluster_nodes(self) -> list[ClusterView]:
        """Return this node's view of every node (``CLUSTER NODES``)."""
        text = str(self.command("CLUSTER", "NODES"))
        return [ClusterView.parse(line) for line in text.splitlines() if line.strip()]

    def role(self) -> str:
        """Return ``master`` or ``replica`` as this node itself says (``ROLE``)."""
        reply = self.command("ROLE")
        assert isinstance(reply, list)
        return "master" if reply[0] == "master" else "replica"

    def replication(self) -> dict[str, str]:
        """Return ``INFO replication`` as a dict of its fields."""
        reply = self.command("INFO", "replication")
        if isinstance(reply, dict):  # redis-py parses INFO, and each slaveN line into a dict of its own
            return {
                str(k): ",".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else str(v)
                for k, v in reply.items()
            }
        return dict(line.split(":", 1) for line in str(reply).splitlines() if ":" in line)

    def start(self) -> None:
        """Start (or start again) and learn the node id (``CLUSTER MYID``).

        Before the node first joined, a port that another process took meanwhile is replaced by new
        free ones (at most twice); a node that joined keeps its ports, since the cluster knows them.
        """
        for attempt in range(3):
            try:
                super().start()
                break
            except RedisExitedError:
                if self.node_id or attempt == 2:
                    raise
                self._new_ports()
        self.node_id = str(self.command("CLUSTER", "MYID"))

    def _new_ports(self) -> None:
        old_port, old_bus = str(self.port), str(self.bus_port)
        self.port = free_port()
        self.bus_port = free_port()
        while self.bus_port == self.port:
            self.bus_port = free_port()
        self.extra_args = [str(self.bus_port) if a == old_bus else a for a in self.extra_args]
        assert old_port not in self.extra_args


class ClusterView:
    """One line of ``CLUSTER NODES``: how one node sees another.

    Attributes:
        node_id: the described node's id.
        port: its client port.
        flags: its flags (``myself``, ``master``, ``slave``, ``fail``, ``fail?``, ...).
        master_id: the id of its master, or ``-``.
        connected: whether the link to it is up.
        slots: the slot ranges it serves, inclusive.
    """

    def __init__(
        self, node_id: str, port: int, flags: set[str], master_id: str, connected: bool, slots: list[tuple[int, int]]
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.flags = flags
        self.master_id = master_id
        self.connected = connected
        self.slots = slots

    @classmethod
    def parse(cls, line: str) -> ClusterView:
        """Parse one line of ``CLUSTER NODES``."""
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        port = int(address.rsplit(":", 1)[1]) if ":" in address else 0
        return cls(fields[0], port, set(fields[2].split(",")), fields[3], fields[7] == "connected", slots)

    @property
    def failing(self) -> bool:
        """True if the viewer believes the node is down (``fail`` or ``fail?``)."""
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


class RedisCluster:
    """A Redis Cluster of ``masters`` redis-server processes, each with ``replicas`` replicas, on 127.0.0.1.

    The slots are assigned by ``redis-cli --cluster create``. Every wait polls with a bound in time.

    Args:
        masters: how many masters (at least 3, as redis-cli requires).
        replicas: replicas per master; with 1, killing a master promotes its replica.
        appendonly: AOF with appendfsync always on every node.
        require_full_coverage: ``cluster-require-full-coverage``; off by default, so the slots that are
            still served keep answering while others have no master.
        node_timeout_ms: ``cluster-node-timeout``; small, so a failover takes a few seconds.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        appendonly: bool = False,
        require_full_coverage: bool = False,
        node_timeout_ms: int = 1500,
    ) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        self.cli = cli
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        # The replicas each killed master had, by its id: the candidates of its failover.
        self._heirs: dict[str, list[str]] = {}
        self.nodes = [
            ClusterNode(
                appendonly=appendonly, node_timeout_ms=node_timeout_ms, require_full_coverage=require_full_coverage
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of a running node, for ``redis.asyncio.cluster.RedisCluster.from_url``."""
        return f"redis://127.0.0.1:{self.live_nodes()[0].port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node, running or not."""
        return [("127.0.0.1", n.port) for n in self.nodes]

    def live_nodes(self) -> list[ClusterNode]:
        """Return the nodes whose process runs."""
        return [n for n in self.nodes if n.running]

    def node(self, node_id_or_port: str | int) -> ClusterNode:
        """Return the node with this id or client port."""
        for n in self.nodes:
            if node_id_or_port in (n.node_id, n.port):
                return n
        raise KeyError(node_id_or_port)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, create the cluster and wait until it is ready (see :meth:`wait_ready`)."""
        for n in self.nodes:
            n.start()
        args = [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop every node (their folders stay, so start() of a node brings it back as it was)."""
        for n in self.nodes:
            n.stop()

    def close(self) -> None:
        """Stop every node and remove their folders."""
        for n in self.nodes:
            n.close()

    def _slot_owners(self) -> list[tuple[int, int, str]]:
        """(first, last, master id) of every served slot range, as the first live node sees them."""
        views = self.live_nodes()[0].cluster_nodes()
        return sorted((a, b, v.node_id) for v in views if "master" in v.flags for a, b in v.slots)

    def ready(self) -> bool:
        """Return True when every running node is healthy and agrees on the topology.

        That is: ``cluster_state:ok``, all 16384 slots assigned, every slot owned by a running master in
        every running node's view, no running node seen as failing, and every running replica in sync.
        """
        try:
            live = self.live_nodes()
            ids = {n.node_id for n in live}
            owners: set[tuple[tuple[int, int, str], ...]] = set()
            for n in live:
                info = n.cluster_info()
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_assigned") != str(SLOTS):
                    return False
                views = n.cluster_nodes()
                if any(v.failing for v in views if v.node_id in ids):
                    return False
                slots = tuple(sorted((a, b, v.node_id) for v in views if "master" in v.flags for a, b in v.slots))
                if sum(b - a + 1 for a, b, _ in slots) != SLOTS or any(owner not in ids for _, _, owner in slots):
                    return False
                owners.add(slots)
                if n.role() == "replica" and n.replication().get("master_link_status") != "up":
                    return False
            return len(owners) == 1
        except (redis.RedisError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until :meth:`ready` holds.

        Raises:
            TimeoutError: it did not within ``timeout_s``.
        """
        wait_for(self.ready, f"Redis Cluster on ports {[n.port for n in self.live_nodes()]}", timeout_s, 0.1)

    def masters(self) -> list[ClusterNode]:
        """Return the masters that serve slots, ordered by their first slot."""
        seen: list[str] = []
        for _, _, owner in self._slot_owners():
            if owner not in seen:
                seen.append(owner)
        return [self.node(i) for i in seen]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """Return the nodes that a running node sees as replicas of ``master``."""
        views = self.live_nodes()[0].cluster_nodes()
        return [self.node(v.node_id) for v in views if v.master_id == master.node_id]

    def master_for_slot(self, slot: int) -> ClusterNode:
        """Return the master that serves ``slot``, as a running node sees it."""
        for first, last, owner in self._slot_owners():
            if first <= slot <= last:
                return self.node(owner)
        raise LookupError(f"no master serves slot {slot}")

    def key_slot(self, key: str) -> int:
        """Return the slot of ``key`` (``CLUSTER KEYSLOT``, so hash tags count as the server counts them)."""
        reply = self.live_nodes()[0].command("CLUSTER", "KEYSLOT", key)
        assert isinstance(reply, int)
        return reply

    def master_for_key(self, key: str) -> ClusterNode:
        """Return the master that serves ``key``."""
        return self.master_for_slot(self.key_slot(key))

    def kill_master(self, index: int) -> ClusterNode:
        """SIGKILL the ``index``-th master of :meth:`masters` and return it."""
        victim = self.masters()[index]
        self._heirs[victim.node_id] = [n.node_id for n in self.replicas_of(victim)]
        victim.kill()
        return victim

    def wait_replicated(self, timeout_s: float = 30.0) -> None:
        """Wait until every running replica has every write its master has acknowledged (equal offsets)."""

        def synced() -> bool:
            for n in self.live_nodes():
                info = n.replication()
                if info.get("role") != "master":
                    continue
                offset = info.get("master_repl_offset")
                for key, value in info.items():
                    # slaveN:ip=...,port=...,state=online,offset=...,lag=...
                    if key.startswith("slave") and key[5:].isdigit():
                        fields = dict(kv.split("=", 1) for kv in value.split(","))
                        if fields.get("state") != "online" or fields.get("offset") != offset:
                            return False
            return True

        wait_for(_quiet(synced), "replicas to catch up with their masters", timeout_s, 0.05)

    def wait_failover(self, failed: ClusterNode, timeout_s: float = 60.0) -> ClusterNode:
        """Wait until a replica of the killed master ``failed`` serves its slots and the cluster is ready.

        Returns:
            The promoted node.

        Raises:
            TimeoutError: no promotion within ``timeout_s``.
        """
        heirs = self._heirs.get(failed.node_id) or [n.node_id for n in self.replicas_of(failed)]
        if not heirs:
            raise ValueError(f"the master on port {failed.port} has no replica to fail over to")
        promoted: list[ClusterNode] = []

        def done() -> bool:
            owners = {owner for _, _, owner in self._slot_owners()}
            found = [h for h in heirs if h in owners]
            if failed.node_id in owners or not found or not self.ready():
                return False
            promoted[:] = [self.node(found[0])]
            return True

        wait_for(_quiet(done), f"failover of the master on port {failed.port}", timeout_s, 0.1)
        return promoted[0]

    def restart_node(self, node: ClusterNode, timeout_s: float = 60.0) -> None:
        """Start a killed or stopped node again and wait until it has rejoined and the cluster is ready.

        A former master whose slots were failed over comes back as a replica of its successor.
        """
        if node.running:
            node.stop()
        node.start()
        wait_for(_quiet(self.ready), f"node on port {node.port} to rejoin", timeout_s, 0.1)


def _quiet(predicate: Callable[[], bool]) -> Callable[[], bool]:
    """Wrap a predicate so that a node not answering (yet) counts as not done rather than as an error."""

    def call() -> bool:
        try:
            return predicate()
        except (redis.RedisError, OSError, LookupError):
            return False

    return call
