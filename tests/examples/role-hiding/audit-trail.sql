-- An audit trail: every role change, as it happened. It must keep the names it recorded.
CREATE TABLE public.role_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid NOT NULL,
    old_role   text,
    new_role   text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION public.audit_role_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF NEW.role IS DISTINCT FROM OLD.role THEN
        INSERT INTO public.role_audit (user_id, old_role, new_role) VALUES (NEW.id, OLD.role, NEW.role);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_role_change AFTER UPDATE OF role ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.audit_role_change();
