"""factory-boy factories for application users of every legacy role, with sessions.

Factories build plain dicts keyed by column name (``DictFactory``), so the same
users can be written into the demo schema or a team's own tables; the seeder
(:mod:`pytest_rolemig.seeding`) picks the columns the target tables have.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import factory
from factory import fuzzy

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


class UserFactory(factory.DictFactory):
    """One application user: identity, profile fields and a legacy role."""

    id = factory.LazyFunction(uuid.uuid4)
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    full_name = factory.LazyAttribute(lambda o: f"{o.first_name} {o.last_name}")
    display_name = factory.LazyAttribute(lambda o: o.first_name)
    email = factory.LazyAttributeSequence(
        lambda o, n: f"{o.first_name}.{o.last_name}+{n}@example.com".lower().replace(" ", "")
    )
    role = "viewer"
    phone = factory.Faker("numerify", text="+1-###-###-####")
    locale = fuzzy.FuzzyChoice(["en", "de", "fr", "es", "pt-BR", "ja"])
    avatar_url = factory.LazyAttribute(lambda o: f"https://avatars.example.com/{o.id}.png")
    # which factory user a row is (copies keep it); never the role: a copy of the role in
    # other data is a place the migration does not reach (the gate's role-mention scan)
    metadata = factory.LazyAttributeSequence(
        lambda o, n: {"signup_source": "web", "theme": "dark", "seed_user": n}
    )
    is_active = True
    created_at = fuzzy.FuzzyDateTime(_EPOCH, _EPOCH + dt.timedelta(days=600))
    updated_at = factory.LazyAttribute(lambda o: o.created_at)
    last_seen_at = factory.LazyAttribute(lambda o: o.created_at + dt.timedelta(days=3))
    # auth.users columns (Supabase names)
    aud = "authenticated"
    encrypted_password = factory.LazyAttribute(lambda o: f"$2a$10${uuid.uuid5(uuid.NAMESPACE_OID, o.email).hex}")
    email_confirmed_at = factory.LazyAttribute(lambda o: o.created_at)
    last_sign_in_at = factory.LazyAttribute(lambda o: o.last_seen_at)
    raw_app_meta_data = factory.LazyAttribute(lambda o: {"provider": "email", "providers": ["email"]})
    raw_user_meta_data = factory.LazyAttribute(lambda o: {"full_name": o.full_name})



class SessionFactory(factory.DictFactory):
    """One login session of a user (``auth.sessions`` shaped)."""

    id = factory.LazyFunction(uuid.uuid4)
    user_id = None
    created_at = fuzzy.FuzzyDateTime(_EPOCH + dt.timedelta(days=600), _EPOCH + dt.timedelta(days=700))
    updated_at = factory.LazyAttribute(lambda o: o.created_at)
    refreshed_at = factory.LazyAttribute(lambda o: (o.created_at + dt.timedelta(hours=1)).replace(tzinfo=None))
    not_after = factory.LazyAttribute(lambda o: o.created_at + dt.timedelta(days=30))
    aal = "aal1"
    user_agent = fuzzy.FuzzyChoice([
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
        "MyApp/3.2 (iPhone; iOS 17.5)",
    ])
    ip = factory.Faker("ipv4_public")
    tag = None


# Calling a factory class returns what its model builds (a dict here), but reads to a type
# checker as an instance of the factory: these two say what comes back.

def build_user(**fields: Any) -> dict[str, Any]:
    """One user's columns from :class:`UserFactory`, ``fields`` overriding the drawn values."""
    user: dict[str, Any] = UserFactory.create(**fields)
    return user


def build_session(**fields: Any) -> dict[str, Any]:
    """One session's columns from :class:`SessionFactory`, ``fields`` overriding the drawn values."""
    session: dict[str, Any] = SessionFactory.create(**fields)
    return session


def user_of_role(role: str, sessions: int = 1, **overrides: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A user of ``role`` and ``sessions`` sessions of theirs."""
    user = build_user(role=role, **overrides)
    return user, [build_session(user_id=user["id"]) for _ in range(sessions)]
