"""Exceptions with messages that name what failed and how to fix it."""


class RolemigError(Exception):
    """Base class for every error the plugin raises on purpose."""


class ServerError(RolemigError):
    """No server binaries, or the server did not start or cannot be reached."""


class ConfigError(RolemigError):
    """A setting is wrong: the message names the option and the ini key."""


class MappingError(ConfigError):
    """The role mapping file is missing, malformed, not total, or maps outside the new roles."""


class InstallError(RolemigError):
    """The SQL infrastructure could not be installed on the target database."""
