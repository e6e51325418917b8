"""Seeding: factory users, and the server-side copies that complete larger sets."""

from pathlib import Path

from sql_helpers import one, rows

from pytest_rolemig.db.templates import clone, load_schema_file
from pytest_rolemig.seeding import seed_users
from pytest_rolemig.target import Target

EXAMPLES = Path(__file__).parent / "examples"


def _sessions_expected(count, max_sessions=3):
    return sum(i % (max_sessions + 1) for i in range(count))


def test_large_sets_are_completed_by_copies_of_factory_users(rolemig_db, rolemig_config, rolemig_template):
    roles = rolemig_template.legacy_roles
    before = one(rolemig_db, "SELECT count(*) AS n FROM public.user_profiles")["n"]
    with rolemig_db.transaction():
        seeded = seed_users(rolemig_db, rolemig_config.target, roles, 300, factory_users=26)
    assert (seeded.users, seeded.sessions) == (300, _sessions_expected(300))
    assert one(rolemig_db, "SELECT count(*) AS n FROM public.user_profiles")["n"] == before + 300
    # round-robin over every role, as with factories alone
    assert sorted(seeded.per_role) == sorted(roles)
    assert max(seeded.per_role.values()) - min(seeded.per_role.values()) <= 1
    counts = {r["role"]: r["n"] for r in rows(
        rolemig_db, "SELECT role, count(*) AS n FROM public.user_profiles GROUP BY role")}
    assert sum(counts.values()) == before + 300
    # copies: parent row and profile agree, e-mails unique and still e-mails, sessions per user kept
    mismatched = one(rolemig_db, """
        SELECT count(*) AS n FROM public.user_profiles p JOIN auth.users u USING (id)
        WHERE p.email IS DISTINCT FROM u.email""")["n"]
    assert mismatched == 0
    dupes = one(rolemig_db, "SELECT count(*) - count(DISTINCT email) AS n FROM auth.users")["n"]
    assert dupes == 0
    copied = rows(rolemig_db, "SELECT email, display_name, metadata->>'seed_user' AS seed_user, role "
                              "FROM public.user_profiles WHERE email LIKE '%%+c%%@example.com'")
    # 26 factory users asked for, rounded up to lcm(13 roles, 4 session counts) = 52
    assert len(copied) == 300 - 52
    assert all(c["display_name"] and c["seed_user"] is not None for c in copied)
    # a copy keeps its source's role: every row descending from one factory user holds one role
    mixed = one(rolemig_db, """
        SELECT count(*) AS n FROM (SELECT metadata->>'seed_user' FROM public.user_profiles
                                   WHERE metadata ? 'seed_user' GROUP BY 1 HAVING count(DISTINCT role) > 1) g""")["n"]
    assert mixed == 0
    # auth.users.role is the API role (its default), not the app role
    assert one(rolemig_db, "SELECT count(*) AS n FROM auth.users WHERE role IS DISTINCT FROM 'authenticated'")["n"] == 0
    assert one(rolemig_db, "SELECT count(*) AS n FROM auth.sessions s LEFT JOIN auth.users u ON u.id = s.user_id "
                           "WHERE u.id IS NULL")["n"] == 0


def test_copies_on_integer_keys_and_serial_session_keys(rolemig_server, rolemig_mapping):
    target = Target(profiles_table="app.members", key_column="member_id", role_column="access_level",
                    sessions_table="app.logins", sessions_user_column="member_id", policy_schemas=("app",))
    with clone(rolemig_server, None, "rolemig_seed_int") as conn:
        load_schema_file(conn, EXAMPLES / "custom-app.sql")
        before = one(conn, "SELECT count(*) AS n, coalesce(max(member_id), 0) AS top FROM app.members")
        with conn.transaction():
            seeded = seed_users(conn, target, list(rolemig_mapping.mapping), 100, factory_users=13)
        after = one(conn, "SELECT count(*) AS n, count(DISTINCT member_id) AS keys FROM app.members")
        assert seeded.users == 100 and after["n"] == after["keys"] == before["n"] + 100
        assert one(conn, "SELECT count(*) AS n FROM app.logins")["n"] >= _sessions_expected(100)
        assert one(conn, "SELECT count(*) - count(DISTINCT login_id) AS n FROM app.logins")["n"] == 0


def test_a_unique_column_copies_cannot_vary_means_factories_for_every_user(rolemig_server, rolemig_mapping):
    target = Target(profiles_table="public.people", key_column="id", role_column="role",
                    sessions_table="public.visits", sessions_user_column="person", policy_schemas=("public",))
    with clone(rolemig_server, None, "rolemig_seed_fallback") as conn:
        conn.execute("""
            CREATE TABLE public.people (id uuid PRIMARY KEY, role text NOT NULL, email text,
                                        badge integer NOT NULL UNIQUE);
            CREATE TABLE public.visits (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                        person uuid NOT NULL REFERENCES public.people (id));
            CREATE SEQUENCE badges;
            CREATE FUNCTION public.badge() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN NEW.badge := nextval('badges'); RETURN NEW; END $$;
            CREATE TRIGGER badge BEFORE INSERT ON public.people FOR EACH ROW EXECUTE FUNCTION public.badge();
        """)
        with conn.transaction():
            seeded = seed_users(conn, target, list(rolemig_mapping.mapping), 120, factory_users=13)
        assert seeded.users == 120
        # every user built by a factory: copies would repeat their sources' e-mails
        assert one(conn, "SELECT count(DISTINCT email) AS n FROM public.people")["n"] == 120
