-- The correct version of app-metadata.sql: the copy of the role in the token's app metadata
-- follows every change of profiles.role (the migration's and a rollback's included), so the
-- policy reading it from the JWT keeps letting the same users in.
CREATE FUNCTION public.sync_role_to_app_metadata() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    UPDATE auth.users SET raw_app_meta_data = raw_app_meta_data || jsonb_build_object('role', NEW.role)
     WHERE id = NEW.id;
    RETURN NEW;
END
$$;
CREATE TRIGGER sync_role_to_app_metadata AFTER INSERT OR UPDATE OF role ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.sync_role_to_app_metadata();
UPDATE auth.users AS u SET raw_app_meta_data = u.raw_app_meta_data || jsonb_build_object('role', p.role)
  FROM public.user_profiles AS p WHERE p.id = u.id;
CREATE POLICY "billing: staff by token" ON public.billing_accounts FOR SELECT TO authenticated
    USING ((auth.jwt() -> 'app_metadata' ->> 'role') IN ('billing_admin', 'org_owner'));
