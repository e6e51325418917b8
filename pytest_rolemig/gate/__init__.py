"""Built-in gate tests, collected with ``pytest --rolemig`` (one module per concern)."""
