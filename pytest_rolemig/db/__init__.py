"""The database side of the plugin: the server, the template and its copies, installing the SQL.

Modules: :mod:`.server` (an ephemeral PostgreSQL, run unprivileged under root, data in
memory), :mod:`.templates` (the session's template database and each test's copy, made by
pytest-postgresql's janitor; an existing server or a team's ``postgresql_proc``),
:mod:`.install` (the infrastructure's SQL files in order, the target, the mapping),
:mod:`.statements` (schema files and migrations folders, statement by statement),
:mod:`.query` (one-row query helpers).
"""
