-- A team's own application, unlike the demo: other schema, table and column names,
-- integer keys, an enum-free text role column without a CHECK constraint, and
-- policies that compare roles through a helper and literal lists.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
END
$$;

CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO authenticated;

CREATE FUNCTION app.current_member() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT nullif(pg_catalog.current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::bigint
$$;

CREATE TABLE app.members (
    member_id    bigint PRIMARY KEY,
    handle       text NOT NULL,
    access_level text NOT NULL,
    joined_on    date NOT NULL DEFAULT current_date
);
CREATE TABLE app.logins (
    login_id   bigserial PRIMARY KEY,
    member_id  bigint NOT NULL REFERENCES app.members (member_id),
    started_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION app.member_level() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$ SELECT m.access_level FROM app.members m WHERE m.member_id = app.current_member() $$;
GRANT EXECUTE ON FUNCTION app.member_level(), app.current_member() TO authenticated;

ALTER TABLE app.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.logins ENABLE ROW LEVEL SECURITY;
GRANT SELECT, UPDATE ON app.members, app.logins TO authenticated;

CREATE POLICY own_member ON app.members FOR SELECT TO authenticated
    USING (member_id = app.current_member());
CREATE POLICY staff_members ON app.members FOR SELECT TO authenticated
    USING (app.member_level() IN ('super_admin', 'org_admin', 'support_agent'));
CREATE POLICY own_logins ON app.logins FOR SELECT TO authenticated
    USING (member_id = app.current_member());
