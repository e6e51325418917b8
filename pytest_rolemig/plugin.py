"""pytest entry point: options, hooks, and the fixtures built at the bottom.

Without ``--rolemig`` the plugin only declares its options and fixtures; nothing
starts until a test asks for a fixture. With ``--rolemig`` the built-in gate
tests (:mod:`pytest_rolemig.gate`) are collected as well.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_rolemig import config as settings
from pytest_rolemig.errors import RolemigError

logger = logging.getLogger("pytest_rolemig")

_CONFIG_KEY = pytest.StashKey["settings.RolemigConfig"]()
_SERVER_LINE = pytest.StashKey[str]()
_SERVER_STARTING = pytest.StashKey[Any]()  # the gate's ephemeral server, starting while tests are collected
GATE_DIR = Path(__file__).with_name("gate")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare ``--rolemig`` and the ``--rolemig-*`` settings with their ini keys."""
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Resolve settings once; a bad one ends the run with one line naming it."""
    unknown = sorted(
        key for key in _ini_keys(config)
        if key.startswith("rolemig_") and key not in {s.ini for s in settings.SETTINGS}
    )
    if unknown:
        known = ", ".join(s.ini for s in settings.SETTINGS)
        raise pytest.UsageError(f"rolemig: unknown ini key(s) {', '.join(unknown)}; known keys: {known}")
    try:
        config.stash[_CONFIG_KEY] = settings.resolve(config)
    except RolemigError as exc:
        raise pytest.UsageError(f"rolemig: {exc}") from None
    if config.getoption("rolemig"):
        for module in gate_modules():
            if str(module) not in config.args:
                config.args.append(str(module))
        _start_server_early(config)


def _start_server_early(config: pytest.Config) -> None:
    """The gate's ephemeral server starts in the background while the tests are collected.

    Collecting the gate imports Hypothesis and the plugin's modules; starting the server takes
    about as long, and every gate test waits for it. Not on an xdist controller (its workers
    run the tests), nor with ``rolemig_dsn`` or an option that runs no test (``--co``, ``--help``,
    ``--fixtures``); a conftest.py that overrides ``rolemig_server``
    leaves it unused, and it is stopped at the end.
    """
    cfg = config.stash[_CONFIG_KEY]
    controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")
    no_tests = ("collectonly", "help", "showfixtures", "show_fixtures_per_test", "markers")
    if cfg.dsn or controller or any(config.getoption(option, False) for option in no_tests):
        return
    from pytest_rolemig.background import Background

    config.stash[_SERVER_STARTING] = Background("rolemig-server-start", lambda: _start_ephemeral_server(cfg))


def _start_ephemeral_server(cfg: settings.RolemigConfig) -> Any:
    """A new ephemeral server with the run's binaries and data folder, started."""
    from pytest_rolemig.db.server import EphemeralServer, find_binaries

    return EphemeralServer(find_binaries(cfg.pg_bin), data_dir=cfg.server_dir).start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the early-started server if no fixture took it (an override, or no test ran)."""
    starting = config.stash.get(_SERVER_STARTING, None)
    if starting is None:
        return
    del config.stash[_SERVER_STARTING]
    try:
        starting.result().stop()
    except Exception:  # noqa: BLE001 - it did not start: nothing to stop, and no fixture asked for it
        pass


def pytest_pycollect_makemodule(module_path: Path, parent: Any) -> Any:
    """Give the gate's modules readable node ids (``rolemig-gate/test_x.py::...``) wherever installed."""
    if module_path.parent == GATE_DIR:
        return pytest.Module.from_parent(parent, path=module_path, nodeid=f"rolemig-gate/{module_path.name}")
    return None


ACCESS_GATE = "test_access_matrix.py"
ROUNDTRIP_GATE = "test_roundtrip.py"
BACKGROUND_GATES = (ROUNDTRIP_GATE, ACCESS_GATE)
"""Gate modules whose work runs in the background from the gate's start: they run last, in this order."""


def gate_modules() -> list[Path]:
    """The built-in gate test modules, in the order they run: the migration checklist first.

    The modules that report background work come last, so the others run meanwhile.
    """
    def order(path: Path) -> tuple[bool, int, str]:
        last = BACKGROUND_GATES.index(path.name) if path.name in BACKGROUND_GATES else -1
        return (path.name != "test_migration.py", last, path.name)

    return sorted(GATE_DIR.glob("test_*.py"), key=order)


def _ini_keys(config: pytest.Config) -> list[str]:
    """Keys present in the ini file (pytest has no public accessor for the raw keys)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(getattr(config, "inicfg", None) or {})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed check reads as its message with titled sections, without Python source.

    ``RolemigAssertionError`` already says which check failed, what was expected and the
    offending rows (as pytest-alembic's failures do); the test's source and the frames of
    the plugin add nothing a team can act on. Hypothesis' notes (the falsifying example)
    are kept. Other errors keep pytest's usual report.
    """
    report = yield
    if call.excinfo is not None and report.failed:
        from pytest_rolemig.assertions import RolemigAssertionError
        from pytest_rolemig.rehearsal import StepBlocked

        exc = call.excinfo.value
        if isinstance(exc, (RolemigAssertionError, StepBlocked)):
            notes = [str(n) for n in getattr(exc, "__notes__", ())]
            report.longrepr = "\n".join([f"{type(exc).__name__}: {exc}", *notes])
    return report


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """Show the chosen settings and where each came from (only with ``--rolemig``)."""
    cfg = config.stash.get(_CONFIG_KEY, None)
    if cfg is None or not cfg.gate:
        return None
    return settings.header_lines(cfg)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say which server the run used (binaries, version, and the system user when root).

    Without ``--rolemig`` there is no header, so an ignored ``DATABASE_URL`` is said here,
    once, and only when a fixture started a server.
    """
    line = config.stash.get(_SERVER_LINE, None)
    if line:
        terminalreporter.write_line(f"rolemig: {line}")
        cfg = config.stash.get(_CONFIG_KEY, None)
        if cfg is not None and not cfg.gate and cfg.ignored_env_note:
            terminalreporter.write_line(f"rolemig: {cfg.ignored_env_note}")
    if not config.getoption("rolemig", False):
        return
    notes = sorted({value for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []) for name, value in getattr(report, "user_properties", ()) if name == "rolemig_note"})
    for note in notes:
        terminalreporter.write_line(f"rolemig: {note}")
    from pytest_rolemig.access.report import UPDATED_ACCESS

    updated = config.stash.get(UPDATED_ACCESS, None)
    if updated:
        source, block = updated
        terminalreporter.write_sep("-", f"rolemig: wrote the measured access changes into {source}")
        terminalreporter.write(block)


def _fail_setup(message: str) -> None:
    """End the run with one line, as a bad setting does (exit code 4), from the first failing setup.

    The fixtures that fail here are session-scoped: pytest would raise the same error again in
    the setup of every test that uses them (the gate's 19, each with its report), so the run
    stops at the first instead, before anything else has to be said.
    """
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    pytest.exit(f"rolemig: {line}", returncode=pytest.ExitCode.USAGE_ERROR)


# ----------------------------------------------------------------- fixtures ---

@pytest.fixture(scope="session")
def rolemig_config(pytestconfig: pytest.Config) -> settings.RolemigConfig:
    """The resolved settings (command line > environment > ini > default)."""
    return pytestconfig.stash[_CONFIG_KEY]


@pytest.fixture(scope="session")
def rolemig_mapping(rolemig_config: settings.RolemigConfig) -> Any:
    """The role mapping read from ``rolemig_mapping`` (the demo mapping by default), checked at start-up."""
    return rolemig_config.mapping


@pytest.fixture(scope="session")
def rolemig_server(rolemig_config: settings.RolemigConfig, pytestconfig: pytest.Config) -> Iterator[Any]:
    """A PostgreSQL server for the session: ephemeral (pytest-postgresql) unless ``rolemig_dsn`` is set.

    A team already on pytest-postgresql overrides this fixture in its conftest.py with
    ``server_from_fixture(postgresql_proc)`` (:func:`pytest_rolemig.db.templates.server_from_fixture`).
    """
    from pytest_rolemig.db.templates import ExistingServer

    problem = None
    starting = pytestconfig.stash.get(_SERVER_STARTING, None)
    try:
        if rolemig_config.dsn:
            server: Any = ExistingServer(rolemig_config.dsn)
        elif starting is not None:  # started while the gate was collected
            del pytestconfig.stash[_SERVER_STARTING]
            server = starting.result()
        else:
            server = _start_ephemeral_server(rolemig_config)
    except RolemigError as exc:
        problem = str(exc)
    if problem is not None:
        _fail_setup(problem)
    logger.info("rolemig: %s", server.describe())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rolemig_template(rolemig_server: Any, rolemig_config: settings.RolemigConfig,
                     rolemig_mapping: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """Template database: schema + infrastructure + mapping + seeded users, built once."""
    import psycopg

    from pytest_rolemig.db.templates import build_template, drop_database
    from pytest_rolemig.errors import describe_pg_error

    pytestconfig.stash[_SERVER_LINE] = rolemig_server.describe()  # ours, or a conftest.py's override
    problem = None
    try:
        template = build_template(rolemig_server, rolemig_config.schema_files, rolemig_config.target,
                                  rolemig_mapping, rolemig_config.users, rolemig_config.auth,
                                  sessions_default=rolemig_config.sessions_default)
    except RolemigError as exc:
        problem = str(exc)
    except psycopg.Error as exc:  # creating or marking the template database, on the server as given
        problem = f"building the template database failed: {describe_pg_error(exc)}"
    if problem is not None:
        _fail_setup(problem)
    yield template
    drop_database(rolemig_server, template.name)


@pytest.fixture(scope="session")
def rolemig_bare_template(rolemig_server: Any, rolemig_template: Any) -> Iterator[str]:
    """Template with the application and seeded users but without the migration infrastructure."""
    import psycopg

    from pytest_rolemig.db.templates import create_database, drop_database, strip_infrastructure, unique_name

    name = unique_name("rolemig_bare_tmpl")
    create_database(rolemig_server, name, template=rolemig_template.name)
    with psycopg.connect(rolemig_server.dsn(name), autocommit=True) as conn:
        strip_infrastructure(conn)
    yield name
    drop_database(rolemig_server, name)


@pytest.fixture
def rolemig_db(rolemig_server: Any, rolemig_template: Any) -> Iterator[Any]:
    """Connection (autocommit) to this test's own copy of the template database."""
    from pytest_rolemig.db.templates import clone

    with clone(rolemig_server, rolemig_template.name, "rolemig_test") as conn:
        yield conn


@pytest.fixture
def rolemig_bare_db(rolemig_server: Any, rolemig_bare_template: str) -> Iterator[Any]:
    """Connection to a copy with the application and users, without the infrastructure."""
    from pytest_rolemig.db.templates import clone

    with clone(rolemig_server, rolemig_bare_template, "rolemig_bare") as conn:
        yield conn


@pytest.fixture
def rolemig_empty_db(rolemig_server: Any) -> Iterator[Any]:
    """Connection to a new, empty database on the session's server."""
    from pytest_rolemig.db.templates import clone

    with clone(rolemig_server, None, "rolemig_empty") as conn:
        yield conn


@pytest.fixture(scope="session")
def rolemig_roundtrip(rolemig_server: Any, rolemig_template: Any, rolemig_config: settings.RolemigConfig,
                      rolemig_mapping: Any) -> Iterator[Any]:
    """A :class:`~pytest_rolemig.roundtrip.RoundTrip` on a copy of the template with its users removed.

    Each example runs in its own rolled-back transaction, so one copy serves the session.
    Rows the team's constraints refuse reject the example instead of failing it: the
    generator only knows the column types, NOT NULL, unique keys and foreign keys.
    """
    from pytest_rolemig.roundtrip import scratch_roundtrip

    with scratch_roundtrip(rolemig_server, rolemig_template.name, rolemig_template.target, rolemig_mapping,
                           prefix="rolemig_roundtrip",
                           strict=False) as roundtrip:
        yield roundtrip


@pytest.fixture(scope="session")
def rolemig_access_rehearsal(rolemig_server: Any, rolemig_template: Any, rolemig_config: settings.RolemigConfig,
                             rolemig_mapping: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """The access gate's rehearsal, on its own copy of the template (it needs every state)."""
    from pytest_rolemig.access.rehearsal import AccessRehearsal
    from pytest_rolemig.access.report import UPDATED_ACCESS
    from pytest_rolemig.access.store import ReachStore
    from pytest_rolemig.db.templates import clone

    with clone(rolemig_server, rolemig_template.name, "rolemig_matrix") as conn, ReachStore.beside(conn) as store:
        rehearsal = AccessRehearsal(conn=conn, config=rolemig_config, mapping=rolemig_mapping, store=store,
                                    update_access=getattr(rolemig_config, "update_access", False))
        try:
            yield rehearsal
        finally:
            rehearsal.stop()
        if rehearsal.written is not None:
            pytestconfig.stash[UPDATED_ACCESS] = (rehearsal.mapping.source, rehearsal.written)


@pytest.fixture(scope="session")
def rolemig_roundtrip_runs(rolemig_roundtrip: Any, rolemig_config: settings.RolemigConfig) -> Iterator[Any]:
    """The gate's round-trip property, once per rollback mode, running in the background."""
    from pytest_rolemig.roundtrip import PropertyRuns

    runs = PropertyRuns(rolemig_roundtrip, rolemig_config.roundtrip_examples)
    try:
        yield runs
    finally:
        runs.stop()


@pytest.fixture(scope="session", autouse=True)
def _rolemig_gate_in_background(request: pytest.FixtureRequest) -> None:
    """With ``--rolemig``, start the round trip and the access matrices as soon as the gate starts.

    They are most of the gate's work, each on its own database copy, and share nothing with
    the other gate tests, which run meanwhile; the tests reporting them run last and wait for
    what is left. Only what the run selected is started.
    """
    if not request.config.getoption("rolemig", False):
        return
    selected = {item.nodeid.split("::")[0] for item in request.session.items}
    if f"rolemig-gate/{ROUNDTRIP_GATE}" in selected:
        request.getfixturevalue("rolemig_roundtrip_runs")
    if f"rolemig-gate/{ACCESS_GATE}" in selected:
        request.getfixturevalue("rolemig_access_rehearsal").start()


@pytest.fixture(scope="session")
def rolemig_rehearsal(rolemig_server: Any, rolemig_template: Any, rolemig_config: settings.RolemigConfig,
                      rolemig_mapping: Any) -> Iterator[Any]:
    """One full rehearsal (install, backup, migrate, rollback) shared by the gate's tests."""
    from pytest_rolemig.db.templates import clone
    from pytest_rolemig.rehearsal import Rehearsal

    with clone(rolemig_server, rolemig_template.name, "rolemig_gate") as conn:
        yield Rehearsal(conn=conn, target=rolemig_template.target, mapping=rolemig_mapping)
