-- Profiles as Supabase's guides write them: keyed by auth.users, filled by a trigger on sign-up,
-- read through RLS with auth.uid(); the default uses a value the previous file added.
create table public.profiles (
  id uuid not null references auth.users on delete cascade,
  email text,
  full_name text,
  role public.app_role not null default 'member',
  updated_at timestamptz default now(),
  primary key (id)
);

alter table public.profiles enable row level security;
grant select, update on public.profiles to authenticated;

create function public.my_role() returns public.app_role
language sql stable security definer set search_path = ''
as $$ select p.role from public.profiles p where p.id = (select auth.uid()) $$;
grant execute on function public.my_role() to authenticated;

create policy "Users see their own profile" on public.profiles
  for select to authenticated using ((select auth.uid()) = id);
create policy "Staff see every profile" on public.profiles
  for select to authenticated using ((select public.my_role()) in ('admin', 'moderator'));

create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, email, full_name)
  values (new.id, new.email, new.raw_user_meta_data ->> 'full_name');
  return new;
end;
$$;
create trigger on_auth_user_created
  after insert on auth.users for each row execute procedure public.handle_new_user();
