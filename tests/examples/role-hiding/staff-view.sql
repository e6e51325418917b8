-- The support desk's directory, exposed to the API as a view.
CREATE VIEW public.staff_directory WITH (security_invoker = true) AS
    SELECT p.id, p.display_name, p.email
      FROM public.user_profiles AS p
     WHERE p.role IN ('support_agent', 'super_admin');
GRANT SELECT ON public.staff_directory TO authenticated;
