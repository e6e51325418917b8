"""The ephemeral server: binary discovery, running as root, clear errors."""

import os
import pwd

import psycopg
import pytest

from pytest_rolemig.errors import ServerError
from pytest_rolemig.server import EphemeralServer, find_binaries


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
    workdir = server.workdir
    pid = int((workdir / "data" / "postmaster.pid").read_text().split()[0])
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
    # the postmaster is gone (immediate stop, nothing left running) and so is its folder
    assert postmaster and not _running(pid)
    assert not workdir.exists()
    server.stop()  # a second stop is harmless
