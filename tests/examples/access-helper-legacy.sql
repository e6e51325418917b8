-- Loaded after the demo schema: billing access moves into a SECURITY DEFINER helper that
-- still compares the caller's role with legacy names. The policy text names no role at all,
-- so a text check passes; after the migration billing staff can no longer reach billing rows.
CREATE OR REPLACE FUNCTION public.is_billing_staff() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT coalesce(public.current_user_role() IN ('billing_admin', 'org_owner', 'super_admin'), false)
$$;
REVOKE ALL ON FUNCTION public.is_billing_staff() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.is_billing_staff() TO authenticated;

DROP POLICY "billing: billing staff" ON public.billing_accounts;
CREATE POLICY "billing: staff via helper" ON public.billing_accounts
    FOR ALL TO authenticated USING (public.is_billing_staff());
