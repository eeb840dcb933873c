"""leakutils.threads: the thread count follows the CPUs the process may use, or LEAKUTILS_THREADS."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from leakutils import book, threads


def test_cgroup_quota_is_read_from_v2_then_v1(tmp_path):
    assert threads._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads._cgroup_quota(tmp_path) == 3.0


def test_configure_sets_and_restores(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.configure(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv(threads.ENV, "1")
        assert threads.configure() == 1
        monkeypatch.delenv(threads.ENV)
        n = threads.configure()
        assert 1 <= n <= threads.available_cpus()
        for bad in (0, -2, "2.5", True):
            with pytest.raises(ValueError, match="positive integer"):
                threads.configure(bad)
    finally:
        torch.set_num_threads(before)


def test_import_follows_the_environment_and_warns_on_a_bad_value():
    code = "import leakutils, torch; print(torch.get_num_threads())"
    one = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, threads.ENV: "1"})
    assert one.stdout.strip() == "1"
    bad = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, threads.ENV: "lots"})
    assert "LEAKUTILS_THREADS must be a positive integer" in bad.stderr


def test_footprint_reports_and_glues():
    f = book.footprint(42)
    assert f.seconds > 0 and f.threads == torch.get_num_threads()
    assert f.peak_mib is None or f.peak_mib > 50
    assert book.glued["ch42_threads"] == f.threads and book.glued["ch42_seconds"] >= 0
