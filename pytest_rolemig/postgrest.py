"""Act as an application user the way PostgREST does for a request: the one place that does it.

A request becomes a user inside a transaction: ``request.jwt.claims`` is set to the JWT's
claims, the role is switched to the API role (``anon_role`` without a JWT), then PostgREST's
``db-pre-request`` function, when one is configured, is called (``SELECT schema.fn()``);
everything is transaction-local. The access matrix, the CLI's ``plan``, the online helpers
and (in SQL, ``migration_control.request_claims``) the log-in check all use these settings,
stored with the target in ``migration_control.target_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.target import parse_ident

USER, ROLE = "{user}", "{role}"
"""The placeholders of a claims template: the acting user's id and their app role."""
TOKEN_FIELDS = ("app_metadata", "user_metadata", "email")
"""Placeholders (``"{app_metadata}"``...) a template may use for what the user's auth row holds."""


@dataclass(frozen=True)
class AuthSettings:
    """How a request is authenticated: the API roles, the claims and the pre-request function.

    ``jwt_claims`` is a JSON object (text) whose ``{user}`` / ``{role}`` become the user's id and
    app role, and ``"{app_metadata}"`` / ``"{user_metadata}"`` / ``"{email}"`` the user's token
    fields; None means Supabase's claims: the token fields Supabase Auth copies from
    ``auth.users`` (app_metadata, user_metadata, email...), ``sub``, ``role`` (the API role) and
    ``role_claim``.
    ``pre_request`` is a function name (``schema.fn``) called after the role switch, or None.
    """

    auth_role: str = "authenticated"
    anon_role: str = "anon"
    role_claim: str = "user_role"
    jwt_claims: str | None = None
    pre_request: str | None = None

    def claims(self, user: str | None, role: str | None,
               token: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JWT claims of a request by ``user`` (None: anonymous) holding app ``role``.

        ``token``: the fields the platform copies from the user's auth row into the token
        (``migration_control.token_fields``); without them a policy reading
        ``auth.jwt() -> 'app_metadata'`` would be false for everyone and prove nothing.
        """
        if user is None:
            return {"role": self.anon_role}
        token = token or {}
        if self.jwt_claims is None:
            return {**token, "sub": user, "role": self.auth_role, self.role_claim: role}
        fields = {f'"{{{name}}}"': token.get(name) for name in TOKEN_FIELDS}
        return fill_template(json.loads(self.jwt_claims), user, role, fields)


def fill_template(value: Any, user: str, role: str | None, fields: dict[str, Any] | None = None) -> Any:
    """``value`` with ``"{user}"`` / ``"{role}"`` replaced, in parsed JSON (keys and strings alike).

    A string that is exactly a placeholder becomes the value itself (the id string, the role or
    null; a token field of ``fields``, keyed ``'"{app_metadata}"'``, its JSON value); inside a
    longer string ``{user}`` / ``{role}`` are replaced by their text.
    """
    if isinstance(value, dict):
        return {fill_template(k, user, role, fields): fill_template(v, user, role, fields)
                for k, v in value.items()}
    if isinstance(value, list):
        return [fill_template(v, user, role, fields) for v in value]
    if isinstance(value, str):
        if fields and f'"{value}"' in fields:
            return fields[f'"{value}"']
        if value == USER:
            return user
        if value == ROLE:
            return role
        return value.replace(USER, user).replace(ROLE, role or "")
    return value


def parse_claims(text: str) -> str:
    """A claims template checked and in canonical form; :class:`ValueError` when it is not a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, sort_keys=True)


def auth_settings(conn: psycopg.Connection[Any]) -> AuthSettings:
    """The settings stored with the target (:func:`pytest_rolemig.api.stored_auth`; defaults without one)."""
    from pytest_rolemig import api  # api's types import this module

    return api.stored_auth(conn)


def from_config(cfg: dict[str, Any]) -> AuthSettings:
    """AuthSettings from a ``target_config`` row (as a dict); columns an older install lacks default."""
    claims = cfg.get("jwt_claims")
    return AuthSettings(
        auth_role=cfg.get("auth_role") or "authenticated",
        anon_role=cfg.get("anon_role") or "anon",
        role_claim=cfg.get("role_claim") or "user_role",
        jwt_claims=None if claims is None else json.dumps(claims, sort_keys=True),
        pre_request=cfg.get("pre_request"),
    )


def token_fields(conn: psycopg.Connection[Any], user: str) -> dict[str, Any]:
    """What the platform copies from ``user``'s auth row into their token (:func:`pytest_rolemig.api.token_fields`)."""
    from pytest_rolemig import api

    return api.token_fields(conn, user)


def act_as(conn: psycopg.Connection[Any], auth: AuthSettings, user: str | None, role: str | None) -> str:
    """Inside the current transaction: become ``user`` (None: anonymous) as PostgREST does; the DB role.

    Claims, then the API role, then the pre-request function, all transaction-local.
    """
    db_role = auth.anon_role if user is None else auth.auth_role
    token = None if user is None else token_fields(conn, user)
    conn.execute("SELECT pg_catalog.set_config('request.jwt.claims', %s, true), "
                 "pg_catalog.set_config('role', %s, true)",
                 (json.dumps(auth.claims(user, role, token)), db_role))
    if auth.pre_request:
        conn.execute(sql.SQL("SELECT {}()").format(sql.Identifier(*parse_ident(auth.pre_request))))
    return db_role
