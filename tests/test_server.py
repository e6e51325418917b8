"""The ephemeral server: binary discovery, running as root, clear errors."""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from pytest_rolemig.db import server as server_module
from pytest_rolemig.db.server import EphemeralServer, data_parent, find_binaries
from pytest_rolemig.errors import ServerError


def test_finds_server_binaries_and_reports_version():
    binaries = find_binaries()
    assert os.path.basename(binaries.pg_ctl) == "pg_ctl"
    assert binaries.major >= 14
    assert binaries.source


def test_explicit_folder_without_binaries_names_what_was_tried(tmp_path):
    with pytest.raises(ServerError) as info:
        find_binaries(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "pg_ctl") in message
    assert "pytest-rolemig[embedded]" in message


def test_session_server_runs_unprivileged_and_says_so(rolemig_server, rolemig_db):
    # the server process never runs as root, whoever runs the tests
    data_dir = rolemig_db.execute("SHOW data_directory").fetchone()[0]
    uid = os.stat(data_dir).st_uid
    assert uid != 0
    if os.geteuid() == 0:
        assert rolemig_server.run_as == pwd.getpwuid(uid).pw_name
        assert "because tests run as root" in rolemig_server.describe()
    assert rolemig_server.binaries.version in rolemig_server.describe()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")
def test_server_processes_carry_no_mirakuru_mark(rolemig_server, rolemig_db):
    # mirakuru SIGKILLs, when any Python process that imported it exits, every process whose
    # mirakuru_uuid contains that process's pid: a server with the mark died with a stranger
    if not isinstance(rolemig_server, EphemeralServer):
        pytest.skip("an existing server (--rolemig-dsn) was not started here")
    # the postmaster's (a backend writes its status over the memory its environment was in)
    postmaster = int((Path(rolemig_db.execute("SHOW data_directory").fetchone()[0]) / "postmaster.pid")
                     .read_text().split()[0])
    names = [entry.split(b"=", 1)[0] for entry in Path(f"/proc/{postmaster}/environ").read_bytes().split(b"\0")]
    assert b"PATH" in names  # the environment was read
    assert b"mirakuru_uuid" not in names


def test_server_that_cannot_start_raises_with_its_log():
    binaries = find_binaries()
    busy = EphemeralServer(binaries).start()
    try:
        clash = EphemeralServer(binaries, port=busy.port)
        with pytest.raises(ServerError) as info:
            clash.start()
        assert f"port {busy.port}" in str(info.value)
        assert clash.workdir is None  # cleaned up after the failure
    finally:
        busy.stop()


def _running(pid):
    """Whether ``pid`` is a live process (a zombie left for a non-reaping init is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stopped_server_refuses_connections():
    server = EphemeralServer(find_binaries()).start()
    dsn = server.dsn()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        postmaster = conn.execute("SELECT pg_postmaster_start_time() IS NOT NULL").fetchone()[0]
    workdir, datadir = server.workdir, server.datadir
    pid = int((datadir / "data" / "postmaster.pid").read_text().split()[0])
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
    # the postmaster is gone (immediate stop, nothing left running) and so is its folder
    assert postmaster and not _running(pid)
    assert not workdir.exists()
    assert not datadir.exists()
    server.stop()  # a second stop is harmless


def test_session_server_says_where_its_data_lives(rolemig_server, rolemig_db):
    data_dir = rolemig_db.execute("SHOW data_directory").fetchone()[0]
    assert os.path.commonpath([data_dir, str(rolemig_server.data_parent)]) == str(rolemig_server.data_parent)
    said = f"data under {rolemig_server.data_parent} ({rolemig_server.data_reason})"
    assert said in rolemig_server.describe()


def test_data_goes_in_memory_only_with_room(monkeypatch, tmp_path):
    monkeypatch.setattr(server_module, "MEMORY_DIR", tmp_path)
    monkeypatch.setattr(server_module, "MEMORY_MIN_FREE", 1)
    assert data_parent() == (tmp_path, data_parent()[1])
    assert data_parent()[1].startswith("in memory")

    monkeypatch.setattr(server_module, "MEMORY_MIN_FREE", 2**62)
    parent, reason = data_parent()
    assert parent != tmp_path
    assert reason.startswith(f"on disk: {tmp_path} has") and "less than" in reason

    monkeypatch.setattr(server_module, "MEMORY_DIR", tmp_path / "missing")
    parent, reason = data_parent()
    assert parent != tmp_path / "missing"
    assert reason == f"on disk: no {tmp_path / 'missing'}"


def test_explicit_data_folder_is_used():
    # not pytest's tmp_path: as root that sits in a 0700 folder the server user cannot enter
    folder = Path(tempfile.mkdtemp(prefix="rolemig-test-datadir-"))
    try:
        folder.chmod(0o755)
        server = EphemeralServer(find_binaries(), data_dir=str(folder))
        assert (server.data_parent, server.data_reason) == (folder, "given with --rolemig-server-dir")
        server.start()
        try:
            with psycopg.connect(server.dsn()) as conn:
                data_dir = conn.execute("SHOW data_directory").fetchone()[0]
            assert data_dir.startswith(f"{folder}/rolemig-pg-data-")
        finally:
            server.stop()
        assert list(folder.iterdir()) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_schema_needs_no_extension(rolemig_empty_db):
    """Server builds without contrib (the [embedded] extra has no pgcrypto) must load the demo."""
    from pytest_rolemig import resources
    from pytest_rolemig.db.templates import load_schema_file

    for path in resources.demo_schema_files():
        load_schema_file(rolemig_empty_db, path)
    extensions = {r[0] for r in rolemig_empty_db.execute("SELECT extname FROM pg_catalog.pg_extension")}
    assert extensions == {"plpgsql"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="creates a system user: root only")
def test_workers_creating_the_server_user_at_once_agree_on_one():
    # the first run of `pytest -n 2` as root: every worker finds the user missing at once
    name = "rolemig_race_test"
    script = ("import sys; from pytest_rolemig.db.server import ensure_server_user; "
              "print(ensure_server_user(sys.argv[1]).pw_uid)")
    try:
        for _round in range(3):  # without the lock, most rounds end with two uids
            subprocess.run(["userdel", name], capture_output=True)
            workers = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True)
                       for _ in range(6)]
            uids = {int(w.communicate(timeout=120)[0]) for w in workers}
            assert uids == {pwd.getpwnam(name).pw_uid}
            with open("/etc/passwd") as passwd:
                assert sum(line.startswith(f"{name}:") for line in passwd) == 1
    finally:
        subprocess.run(["userdel", name], capture_output=True)
