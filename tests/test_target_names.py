"""Table names read in Python exactly as ``configure_target`` reads them (``parse_ident``)."""

import psycopg
import pytest

from pytest_rolemig.target import Target, parse_ident, qualified_name, split_qualified

NAMES = [
    "public.user_profiles", "App.Members", '"Crm"."User Profiles"', 'crm."User Profiles"',
    ' "a.b" . "c""d" ', "Ünïcode.Tâble", "s$1._x9", '"My Schema".plain', "user_profiles",
]
BAD = ['"unclosed', "public.", ".x", "public.user profiles", "a.b.c", '""', "1abc", "a;drop"]


@pytest.mark.parametrize("name", NAMES)
def test_parts_are_those_of_the_server(rolemig_empty_db, name):
    assert parse_ident(name) == tuple(rolemig_empty_db.execute("SELECT pg_catalog.parse_ident(%s)",
                                                               (name,)).fetchone()[0])


@pytest.mark.parametrize("name", BAD)
def test_names_the_server_refuses_are_refused(rolemig_empty_db, name):
    parts = None
    try:
        parts = rolemig_empty_db.execute("SELECT pg_catalog.parse_ident(%s)", (name,)).fetchone()[0]
    except psycopg.Error:
        pass
    assert parts is None or len(parts) > 2, "the server takes it as a table name"
    with pytest.raises(ValueError):
        split_qualified(name)


def test_canonical_spelling_reads_back_the_same():
    assert qualified_name("user_profiles") == "public.user_profiles"
    assert qualified_name("App.Members") == "app.members"
    assert qualified_name('"Crm"."User Profiles"') == '"Crm"."User Profiles"'
    assert qualified_name('x."say ""hi"""') == 'x."say ""hi"""'
    for name in NAMES:
        assert split_qualified(qualified_name(name)) == split_qualified(name)


def test_target_gives_catalog_names():
    target = Target(profiles_table='"Crm"."User Profiles"', sessions_table="Crm.logins")
    assert target.profiles_name == ("Crm", "User Profiles")
    assert target.sessions_name == ("crm", "logins")
