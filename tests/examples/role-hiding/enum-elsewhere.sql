-- A team-membership table with its own enum of the legacy role names.
CREATE TYPE public.team_role AS ENUM ('team_lead', 'contributor', 'viewer');
CREATE TABLE public.team_members (
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    team    text NOT NULL,
    role    public.team_role NOT NULL DEFAULT 'viewer',
    PRIMARY KEY (user_id, team)
);
