-- A policy reads the role from the token's app metadata, but nothing ever copies the role
-- there: it is false for every user before the migration and after it, so no access
-- comparison can see what the migration does to it. The gate reports it.
CREATE POLICY "billing: staff by token" ON public.billing_accounts FOR SELECT TO authenticated
    USING ((auth.jwt() -> 'app_metadata' ->> 'role') IN ('billing_admin', 'org_owner'));
