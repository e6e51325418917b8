-- A real break hiding next to an updated_at trigger: a role change deactivates the account
-- until an admin re-approves it. The migration changes every role: everybody is locked out.
CREATE FUNCTION public.reapprove_on_role_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role IS DISTINCT FROM OLD.role THEN
        NEW.is_active := false;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER reapprove_on_role_change BEFORE UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.reapprove_on_role_change();
