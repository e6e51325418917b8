-- Pending invitations carry the role the invitee will get: a CHECK, an enum-like list,
-- one pending owner invitation per organisation, and rows holding legacy names.
CREATE TABLE public.invitations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES public.organizations (id),
    email           text NOT NULL,
    role            text NOT NULL CONSTRAINT invitations_role_check
                        CHECK (role IN ('org_owner', 'org_admin', 'team_lead', 'viewer')),
    accepted_at     timestamptz
);
CREATE UNIQUE INDEX invitations_one_pending_owner ON public.invitations (organization_id)
    WHERE role = 'org_owner' AND accepted_at IS NULL;
INSERT INTO public.organizations (id, name) VALUES ('00000000-0000-4000-8000-00000000000a', 'Acme');
INSERT INTO public.invitations (organization_id, email, role)
VALUES ('00000000-0000-4000-8000-00000000000a', 'new.lead@example.com', 'team_lead');
