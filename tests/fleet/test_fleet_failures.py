"""Real engine processes (evicctl.fleet.worker) against a real 3-node cluster: cross-engine
hits, the leader killed, a manager frozen with SIGSTOP, a manager killed, a Redis node killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fleet_helpers import wait_for

from evicctl.fleet.keys import FleetKeys
from evicctl.manager.tiers.remote_client import connect
from evicctl.manager.tiers.remote_keys import control_keys

FAST = ["--tokens", "128", "--prefill-s-per-1k", "0.2"]


class Worker:
    """One engine process; its JSON lines collected as they come."""

    def __init__(self, url: str, root, namespace: str, engine: str, *args: str) -> None:
        cmd = [sys.executable, "-P", "-m", "evicctl.fleet.worker", "--url", url, "--root", str(root),
               "--namespace", namespace, "--engine", engine, *FAST, *args]  # fmt: skip
        self.engine = engine
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self._line), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)

    def _line(self, line: str) -> None:
        try:
            self.lines.append(json.loads(line))
        except json.JSONDecodeError:
            self.stderr.append(line)

    def requests(self) -> list[dict]:
        return [x for x in self.lines if "source" in x]

    def last_alive(self) -> dict | None:
        alive = [x for x in self.lines if x.get("alive")]
        return alive[-1] if alive else None

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture()
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        with contextlib.suppress(ProcessLookupError):
            w.signal(signal.SIGCONT)
        w.stop()


def start(workers, *args, **kw) -> Worker:
    w = Worker(*args, **kw)
    workers.append(w)
    return w


def leader_of(client, namespace: str) -> tuple[str | None, int]:
    ctl = control_keys(namespace)
    leader, epoch = client.get(ctl.leader), client.get(ctl.epoch)
    return (leader.decode() if leader else None), int(epoch or 0)


def test_cross_engine_hits_across_processes_are_bit_exact(tmp_path, cluster, namespace, workers) -> None:
    a = start(workers, cluster.url, tmp_path, namespace, "a", "--ids", "d1,d2", "--serve-s", "30")
    wait_for(lambda: len(a.requests()) == 2, 30)
    b = start(workers, cluster.url, tmp_path, namespace, "b", "--ids", "d1,d2,d1")
    wait_for(lambda: any(x.get("done") for x in b.lines), 30)
    got = b.requests()
    assert [x["source"] for x in got] == ["remote", "remote", "local"], got
    assert [x["kv"] for x in got[:2]] == [x["kv"] for x in a.requests()]  # the same bytes A computed
    assert not any("Traceback" in line for line in a.stderr + b.stderr)


def test_a_killed_leader_is_replaced_with_a_higher_epoch(tmp_path, cluster, namespace, workers) -> None:
    client = connect(cluster.url)
    ws = {e: start(workers, cluster.url, tmp_path, namespace, e, "--ids", "x", "--serve-s", "60") for e in "pqr"}
    first, epoch = wait_for(lambda: leader_of(client, namespace)[0] and leader_of(client, namespace), 30)
    ws[first].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    new, new_epoch = wait_for(lambda: (lambda le: le if le[0] not in (None, first) else None)(leader_of(client, namespace)), 15)
    assert new_epoch > epoch and time.monotonic() - killed_at < 6.0  # the 3 s lease + a beat


def test_a_frozen_leader_loses_the_lead_and_knows_it_when_it_wakes(tmp_path, cluster, namespace, workers) -> None:
    client = connect(cluster.url)
    ws = {e: start(workers, cluster.url, tmp_path, namespace, e, "--ids", "x", "--serve-s", "60") for e in "stu"}
    first, epoch = wait_for(lambda: leader_of(client, namespace)[0] and leader_of(client, namespace), 30)
    frozen = ws[first]
    frozen.signal(signal.SIGSTOP)  # a partition as the cluster sees it: no heartbeats, no renewals
    new, new_epoch = wait_for(lambda: (lambda le: le if le[0] not in (None, first) else None)(leader_of(client, namespace)), 15)
    assert new_epoch > epoch
    n_before = len(frozen.lines)
    frozen.signal(signal.SIGCONT)
    # awake, it renews nothing: its next beat sees another leader and it follows
    wait_for(lambda: any(x.get("alive") and not x["leader"] for x in frozen.lines[n_before + 1:]), 10)
    assert leader_of(client, namespace) == (new, new_epoch)


def test_a_killed_managers_holds_expire_and_nothing_leaks(tmp_path, cluster, namespace, workers) -> None:
    client = connect(cluster.url)
    ctl = control_keys(namespace)
    keeper = start(workers, cluster.url, tmp_path, namespace, "keeper", "--ids", "k", "--serve-s", "60",
                   "--holder-timeout-s", "2")  # fmt: skip
    doomed = start(workers, cluster.url, tmp_path, namespace, "doomed", "--ids", "z1,z2", "--serve-s", "60")
    wait_for(lambda: len(doomed.requests()) == 2 and len(keeper.requests()) == 1, 30)
    held = int(client.get(ctl.used))
    assert held > 0 and client.hlen(ctl.ledger) == 3
    doomed.signal(signal.SIGKILL)
    # the leader (keeper, the only one left) drops the dead manager's holds after 2 s
    wait_for(lambda: client.hlen(ctl.ledger) == 1, 15)
    assert int(client.get(ctl.used)) == held * 1 // 3  # three equal objects; keeper's remains
    assert client.zscore(FleetKeys(namespace).managers, "doomed") is not None  # shown as stale, not hidden


def test_a_killed_redis_node_leaves_engines_serving_locally(tmp_path, own_cluster, namespace, workers) -> None:
    client = connect(own_cluster.url)
    ctl_slot = client.keyslot(control_keys(namespace).used)
    ctl_port = client.nodes_manager.get_node_from_slot(ctl_slot).port
    ws = [start(workers, own_cluster.url, tmp_path, namespace, e, "--ids", "c1,c2,c3", "--serve-s", "60",
                "--cpu-bytes", str(64 << 20), "--prefill-s-per-1k", "2") for e in ("v", "w")]  # fmt: skip
    wait_for(lambda: all(w.last_alive() for w in ws), 30)
    os.kill(own_cluster.pid(ctl_port), signal.SIGKILL)  # the node with the ledger and the leader's lease
    wait_for(lambda: all(w.last_alive()["shared_state"] == "unreachable" for w in ws), 15)
    n = [len(w.lines) for w in ws]
    wait_for(lambda: all(len(w.lines) > k + 4 for w, k in zip(ws, n, strict=True)), 10)
    for w in ws:
        alive = w.last_alive()
        assert w.proc.poll() is None and alive["local_hits"] == 3 and not alive["leader"]  # serving every context
        assert not any("Traceback" in line for line in w.stderr), "".join(w.stderr)[-2000:]
