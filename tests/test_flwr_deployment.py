"""Chapter 8's curious server in a real Flower deployment: `flwr run` against separate processes.

The notebook runs :class:`leakutils.fl.CuriousStrategy` under ``run_simulation``; this test
runs the Flower App in ``examples/flower_deployment`` unchanged with ``flwr run`` against a
SuperLink and two SuperNodes, each its own process, talking to each other over localhost
(Flower 1.42: HTTP, no TLS), and then reads the audit log the curious server wrote.

The commands, with free ports ``L`` (SuperLink), ``A`` and ``B`` (the SuperNodes' runtime
APIs) and ``FLWR_HOME`` under pytest's ``tmp_path``::

    flower-superlink --insecure --port L --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:L --port A --node-config partition-id=0
    flower-supernode --insecure --superlink 127.0.0.1:L --port B --node-config partition-id=1
    flwr run examples/flower_deployment local-deployment --stream -c 'audit-dir="<tmp>/audit"'

with ``$FLWR_HOME/config.toml`` naming the SuperLink connection ``local-deployment``.
"""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_deployment"
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 180  # seconds for `flwr run` (the whole round, both clients, the attack)
START_TIMEOUT = 60  # seconds for the SuperLink to accept connections


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on localhost (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _command(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} not found: the test environment needs Flower (pip install 'leakutils[fl]')"
    return str(path)


class Deployment:
    """Long-running Flower processes, each in its own process group, with a log file each."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen] = {}
        self.children: list = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen([_command(args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, env=self.env, start_new_session=True)
        log.close()

    def logs(self) -> str:
        return "\n".join(f"--- {name} (exit code {p.poll()}), last lines of {name}.log:\n"
                         f"{_tail(self.root / f'{name}.log')}" for name, p in self.procs.items())

    def check_alive(self) -> None:
        dead = [name for name, p in self.procs.items() if p.poll() is not None and name != "flwr-run"]
        assert not dead, f"{', '.join(dead)} died:\n{self.logs()}"

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after 15 s; also the detached SuperExecs."""
        try:  # Flower starts its SuperExec processes in sessions of their own: find them first
            import psutil

            for p in self.procs.values():
                try:
                    self.children += psutil.Process(p.pid).children(recursive=True)
                except psutil.Error:
                    pass
        except ImportError:  # they also exit by themselves when their parent is gone
            pass
        for p in self.procs.values():
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # psutil.TimeoutExpired, or it is gone
                try:
                    child.kill()
                except Exception:
                    pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def deployment(tmp_path):
    """A SuperLink and two SuperNodes on free localhost ports; always stopped afterwards."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    link, node_a, node_b = _free_ports(3)
    # the Flower configuration: the SuperLink connection that `flwr run` names
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    # the SuperLink and SuperNodes start Flower's other commands (flower-superexec) by name:
    # the test environment's bin folder comes first on PATH even when it is not activated
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    dep = Deployment(tmp_path, env)
    try:
        dep.start("superlink", "flower-superlink", "--insecure", "--port", str(link),
                  "--disable-runtime-dependency-installation")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            dep.check_alive()
            try:
                socket.create_connection(("127.0.0.1", link), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"the SuperLink did not listen within {START_TIMEOUT} s:\n" \
                                                    f"{dep.logs()}"
                time.sleep(0.5)
        for i, port in enumerate((node_a, node_b)):
            dep.start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                      "--port", str(port), "--node-config", f"partition-id={i}")
        yield dep
    finally:
        dep.stop()


def test_curious_server_under_flwr_run(deployment, tmp_path):
    audit = tmp_path / "audit"
    deployment.start("flwr-run", "flwr", "run", str(APP), "local-deployment", "--stream",
                     "--run-config", f'audit-dir="{audit}"')
    run = deployment.procs["flwr-run"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while run.poll() is None:
        deployment.check_alive()
        assert time.monotonic() < deadline, f"flwr run did not finish within {RUN_TIMEOUT} s:\n{deployment.logs()}"
        time.sleep(0.5)
    assert run.returncode == 0, f"flwr run failed:\n{deployment.logs()}"
    assert (audit / "audit.csv").exists(), f"the curious server wrote no audit.csv in {audit}:\n{deployment.logs()}"

    with open(audit / "audit.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["round"] == "1"]
    assert len(rows) == 2, f"round 1 has {len(rows)} audited replies, not 2 (one per SuperNode): {rows}"
    assert sorted(r["client"] for r in rows) == ["0", "1"], f"clients {[r['client'] for r in rows]}, not 0 and 1"
    assert len({r["node_id"] for r in rows}) == 2, f"the two replies share a node id: {rows}"
    for r in rows:
        who = f"client {r['client']} (node {r['node_id']})"
        assert (r["examples"], r["returned"], r["dtype"], r["local_steps"]) == ("8", "8", "float64", "1"), (
            f"{who}: examples {r['examples']}, returned {r['returned']}, {r['dtype']}, {r['local_steps']} step(s); "
            "expected a float64 batch of 8 in one step, 8 samples returned")
        # one float64 SGD step on 8 digits: ExAN rebuilds every digit to round-off, as for
        # Chapter 8's client 2 (about 300 dB; a wrong digit scores below 20 dB)
        assert r["attack"] == "exan" and r["recovered"] == "8", (
            f"{who}: {r['attack']} recovered {r['recovered']} of 8 (expected ExAN, all 8)")
        assert float(r["psnr_median"]) > 250 and float(r["psnr_min"]) > 200, (
            f"{who}: median PSNR {float(r['psnr_median']):.1f} dB, worst {float(r['psnr_min']):.1f} dB "
            "(expected > 250 and > 200 dB: exact in float64)")
        assert float(r["label_accuracy"]) == 1.0, f"{who}: label accuracy {r['label_accuracy']}, not 1"
        png = audit / r["png"]
        assert png.is_file() and png.stat().st_size > 0, f"{who}: no PNG at {png}"
