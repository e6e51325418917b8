"""Tools beside the plugin and the CLI: not loaded by pytest, run on their own.

:mod:`.load` migrates users online while clients keep acting as users (``rolemig-load``).
"""
