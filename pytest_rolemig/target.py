"""Which tables and columns of the application the migration works on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """Where the application keeps user roles and sessions.

    Defaults describe a Supabase-style application (and the bundled demo).
    """

    profiles_table: str = "public.user_profiles"
    key_column: str = "id"
    role_column: str = "role"
    sessions_table: str = "auth.sessions"
    sessions_user_column: str = "user_id"
    policy_schemas: tuple[str, ...] = ("public", "auth")
    batch_size: int = 1000

    def configure_sql(self) -> tuple[str, tuple[object, ...]]:
        """The call that stores this target in ``migration_control.target_config``."""
        return (
            "SELECT * FROM migration_control.configure_target("
            "p_profiles_table => %s, p_key_column => %s, p_role_column => %s, "
            "p_sessions_table => %s, p_sessions_user_column => %s, "
            "p_policy_schemas => %s, p_batch_size => %s)",
            (
                self.profiles_table, self.key_column, self.role_column,
                self.sessions_table, self.sessions_user_column,
                list(self.policy_schemas), self.batch_size,
            ),
        )
