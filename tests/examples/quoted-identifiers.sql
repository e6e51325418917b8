-- A team's own application whose names need quoting: a mixed-case schema, tables and
-- columns with spaces and capitals. The gate is pointed at it with the same spelling
-- the rolemig CLI takes: --rolemig-profiles-table 'Crm."User Profiles"' and raw
-- column names (--rolemig-role-column 'User Role').
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

CREATE SCHEMA "Crm";
GRANT USAGE ON SCHEMA "Crm" TO authenticated;

CREATE FUNCTION "Crm"."Current User"() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT nullif(pg_catalog.current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::bigint
$$;

CREATE TABLE "Crm"."User Profiles" (
    "User Id"    bigint PRIMARY KEY,
    "Full Name"  text NOT NULL,
    "User Role"  text NOT NULL,
    "Joined On"  date NOT NULL DEFAULT current_date
);
CREATE TABLE "Crm"."Login Sessions" (
    "Session Id" bigserial PRIMARY KEY,
    "User Id"    bigint NOT NULL REFERENCES "Crm"."User Profiles" ("User Id"),
    "Started At" timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "Crm"."Deal Notes" (
    "Note Id"  bigserial PRIMARY KEY,
    "Owner Id" bigint NOT NULL REFERENCES "Crm"."User Profiles" ("User Id"),
    "Body"     text NOT NULL
);

CREATE FUNCTION "Crm"."Current Role"() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$ SELECT p."User Role" FROM "Crm"."User Profiles" p WHERE p."User Id" = "Crm"."Current User"() $$;
GRANT EXECUTE ON FUNCTION "Crm"."Current Role"(), "Crm"."Current User"() TO authenticated;

ALTER TABLE "Crm"."User Profiles" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "Crm"."Login Sessions" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "Crm"."Deal Notes" ENABLE ROW LEVEL SECURITY;
GRANT SELECT, UPDATE ON "Crm"."User Profiles", "Crm"."Login Sessions", "Crm"."Deal Notes" TO authenticated;

CREATE POLICY "Own Profile" ON "Crm"."User Profiles" FOR SELECT TO authenticated
    USING ("User Id" = "Crm"."Current User"());
CREATE POLICY "Own Sessions" ON "Crm"."Login Sessions" FOR SELECT TO authenticated
    USING ("User Id" = "Crm"."Current User"());
CREATE POLICY "Own Notes" ON "Crm"."Deal Notes" FOR SELECT TO authenticated
    USING ("Owner Id" = "Crm"."Current User"());
CREATE POLICY "Staff Read Notes" ON "Crm"."Deal Notes" FOR SELECT TO authenticated
    USING ("Crm"."Current Role"() IN ('super_admin', 'org_owner', 'admin', 'org_admin'));
