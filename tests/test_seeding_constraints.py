"""Seeding respects the application: unique and partial unique indexes, foreign keys from any
column, CHECK constraints, sign-up triggers, roles tables (issue #18).

Each test loads a small application into its own database and seeds it as the gate does.
"""

import pytest
from sql_helpers import one, rows

from pytest_rolemig.db.templates import clone
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding import seed_users
from pytest_rolemig.seeding.bulk import bulk_seed_users
from pytest_rolemig.target import Target

ROLES = ["owner", "admin", "member"]

APP = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text UNIQUE);
CREATE TABLE auth.sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                            user_id uuid NOT NULL REFERENCES auth.users (id));
CREATE TABLE public.organizations (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.members (
    id           uuid PRIMARY KEY REFERENCES auth.users (id),
    -- handles: the factories draw first names, which collide among a hundred users
    display_name text NOT NULL,
    phone        text CHECK (phone ~ '^[0-9]+$'),
    org_id       bigint NOT NULL REFERENCES public.organizations (id),
    role         text NOT NULL
);
CREATE UNIQUE INDEX members_display_name_key ON public.members (display_name);
-- one owner per organisation
CREATE UNIQUE INDEX members_one_owner ON public.members (org_id) WHERE role = 'owner';
"""
TARGET = Target(profiles_table="public.members", policy_schemas=("public",))


def test_seeded_users_satisfy_unique_partial_unique_foreign_key_and_check(rolemig_server):
    with clone(rolemig_server, None, "rolemig_seed_rules") as conn:
        conn.execute(APP)
        for _ in range(3):  # the collisions were random: seed several sets into one database
            with conn.transaction():
                seeded = seed_users(conn, TARGET, ROLES, 120)
            assert seeded.users == 120
        assert one(conn, "SELECT count(*) AS n, count(DISTINCT display_name) AS d FROM public.members") == {
            "n": 360, "d": 360}
        owners = one(conn, "SELECT count(*) AS n, count(DISTINCT org_id) AS orgs FROM public.members "
                           "WHERE role = 'owner'")
        assert owners["n"] == owners["orgs"] == 120
        # the CHECK refused the factory's phone numbers: the optional column is left empty
        assert one(conn, "SELECT count(phone) AS n FROM public.members")["n"] == 0


def test_a_check_a_required_column_cannot_meet_names_the_constraint_and_table(rolemig_server):
    with clone(rolemig_server, None, "rolemig_seed_check") as conn:
        conn.execute(APP + "ALTER TABLE public.members ADD COLUMN code text NOT NULL "
                           "CONSTRAINT members_code_format CHECK (code ~ '^[A-Z]{3}$');")
        with pytest.raises(ConfigError, match="CHECK constraint members_code_format on table public.members"):
            with conn.transaction():
                seed_users(conn, TARGET, ROLES, 10)


SIGNUP = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text UNIQUE);
CREATE TABLE auth.sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                            user_id uuid NOT NULL REFERENCES auth.users (id));
CREATE TABLE public.profiles (id uuid PRIMARY KEY REFERENCES auth.users (id), handle text NOT NULL UNIQUE);
CREATE TABLE public.user_roles (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id),
    role    text NOT NULL,
    UNIQUE (user_id, role)
);
CREATE FUNCTION public.on_signup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.profiles VALUES (NEW.id, 'u' || left(NEW.id::text, 8));
    INSERT INTO public.user_roles (user_id, role) VALUES (NEW.id, 'member');
    RETURN NEW;
END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.on_signup();
"""


def test_a_roles_table_is_seeded_through_the_sign_up_trigger(rolemig_server):
    target = Target(profiles_table="public.user_roles", key_column="id", user_column="user_id")
    with clone(rolemig_server, None, "rolemig_seed_signup") as conn:
        conn.execute(SIGNUP)
        with conn.transaction():
            seeded = seed_users(conn, target, ROLES, 12)
        assert seeded.users == 12
        # every user signed up once: one profile each, made by the trigger
        assert one(conn, "SELECT count(*) AS n FROM public.profiles")["n"] == 12
        held = rows(conn, "SELECT user_id, array_agg(role ORDER BY role) AS roles FROM public.user_roles "
                          "GROUP BY user_id")
        assert len(held) == 12
        # the trigger's default role row was given the user's role; users of the first round of
        # roles hold a second one
        assert sorted(len(h["roles"]) for h in held) == [1] * 6 + [2] * 6
        assert one(conn, "SELECT count(*) AS n FROM public.user_roles WHERE role = 'member'")["n"] >= 4
        assert one(conn, "SELECT count(*) AS n FROM auth.sessions s "
                         "LEFT JOIN auth.users u ON u.id = s.user_id WHERE u.id IS NULL")["n"] == 0


def test_bulk_seeding_a_roles_table_goes_through_the_sign_up_trigger(rolemig_server):
    target = Target(profiles_table="public.user_roles", key_column="id", user_column="user_id")
    with clone(rolemig_server, None, "rolemig_bulk_signup") as conn:
        conn.execute(SIGNUP)
        with conn.transaction():
            result = bulk_seed_users(conn, target, ROLES, 50)
        assert result.users == 50
        counts = one(conn, "SELECT count(*) AS n, count(DISTINCT user_id) AS users FROM public.user_roles")
        assert counts == {"n": 50, "users": 50}
        per_role = {r["role"]: r["n"] for r in rows(
            conn, "SELECT role, count(*) AS n FROM public.user_roles GROUP BY role")}
        assert per_role == {"owner": 16, "admin": 17, "member": 17}
        assert one(conn, "SELECT count(*) AS n FROM public.profiles")["n"] == 50
