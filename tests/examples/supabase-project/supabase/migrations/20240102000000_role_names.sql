-- The new role names, added ahead of the role migration. ALTER TYPE ... ADD VALUE commits
-- with this file: a later file may use the new values, this one may not.
alter type public.app_role add value if not exists 'staff';
alter type public.app_role add value if not exists 'member';
