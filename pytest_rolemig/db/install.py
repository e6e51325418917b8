"""Install the SQL infrastructure exactly as the master setup script does.

``pytest_rolemig/sql/setup-migration-infrastructure.sql`` includes the component files in
:data:`~pytest_rolemig.resources.INSTALL_ORDER` (their numbers) inside one transaction; this
module applies the same files in the same order, in one transaction, then
stores the target and the role mapping. A failure leaves nothing behind.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from pytest_rolemig import api, resources
from pytest_rolemig.errors import InstallError, MappingRefused, describe_pg_error
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target

_INCLUDE = re.compile(r"^\\ir\s+(\S+)", re.MULTILINE)


def master_script_order() -> list[str]:
    """The component files the master script includes, in its order."""
    text = resources.sql_file(resources.MASTER_SCRIPT).read_text(encoding="utf-8")
    return _INCLUDE.findall(text)


def component_sql() -> list[tuple[str, str]]:
    """(file name, SQL text) of every component, in install order."""
    order = master_script_order()
    if tuple(order) != resources.INSTALL_ORDER:
        raise InstallError(
            f"{resources.MASTER_SCRIPT} includes {order}, but the installer expects "
            f"{list(resources.INSTALL_ORDER)}: the two must not drift apart"
        )
    return [(name, resources.sql_file(name).read_text(encoding="utf-8")) for name in order]


def install(conn: psycopg.Connection[Any], target: Target | None = None,
            mapping: RoleMapping | None = None, auth: AuthSettings | None = None) -> None:
    """Install (or re-install) the infrastructure, configure the target and requests, load the mapping."""
    target = target or Target()
    auth = auth or AuthSettings()
    try:
        with conn.transaction():
            for name, text in component_sql():
                try:
                    conn.execute(text.encode("utf-8"))  # several statements: simple query protocol
                except psycopg.Error as exc:
                    raise InstallError(f"installing {name} failed: {describe_pg_error(exc)}") from exc
            try:
                api.configure_target(conn, target)
            except psycopg.Error as exc:
                raise InstallError(f"target check failed: {describe_pg_error(exc)}") from exc
            try:
                api.configure_requests(conn, auth)
            except psycopg.Error as exc:
                raise InstallError(f"request settings check failed: {describe_pg_error(exc)}") from exc
            if mapping is not None:
                try:
                    api.load_role_mapping(conn, mapping)
                except psycopg.Error as exc:
                    raise MappingRefused(
                        f"loading role mapping {mapping.source} failed: {describe_pg_error(exc)}") from exc
    except psycopg.Error as exc:  # the COMMIT itself
        raise InstallError(f"installing the migration infrastructure failed: {describe_pg_error(exc)}") from exc

