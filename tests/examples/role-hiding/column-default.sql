-- New sign-ups still get a legacy role: the column default was written years ago.
ALTER TABLE public.user_profiles ALTER COLUMN role SET DEFAULT 'contributor';
