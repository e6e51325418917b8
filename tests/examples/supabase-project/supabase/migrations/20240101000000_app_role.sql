-- The roles the app started with.
create type public.app_role as enum ('admin', 'moderator', 'viewer');
