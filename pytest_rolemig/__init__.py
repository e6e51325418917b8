"""pytest-rolemig: rehearse and gate a PostgreSQL user-role migration on a real database."""

__version__ = "0.1.0"
