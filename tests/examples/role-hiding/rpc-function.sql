-- An RPC the front end calls to show the billing menu; no policy uses it.
CREATE FUNCTION public.can_see_billing() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$
    SELECT coalesce((SELECT p.role IN ('billing_admin', 'org_owner')
                       FROM public.user_profiles AS p WHERE p.id = auth.uid()), false)
$$;
GRANT EXECUTE ON FUNCTION public.can_see_billing() TO authenticated;
