-- The updated_at trigger nearly every Supabase application has (moddatetime's job, in PL/pgSQL).
CREATE FUNCTION public.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();  -- every write of the row, whoever makes it
    RETURN NEW;
END
$$;
CREATE TRIGGER touch_updated_at BEFORE UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
