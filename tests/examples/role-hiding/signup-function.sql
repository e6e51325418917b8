-- A sign-up hook that creates the profile with a legacy role.
CREATE FUNCTION public.handle_new_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    -- every new user starts as an author; editors promote them
    INSERT INTO public.user_profiles (id, email, role) VALUES (NEW.id, NEW.email, 'author')
    ON CONFLICT (id) DO NOTHING;
    RETURN NEW;
END
$$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
