"""The access matrix: what each kind of user really reaches through RLS, measured as PostgREST acts.

Modules: :mod:`.catalog` (what the API exposes and how each table is probed), :mod:`.matrix`
(acting as users and recording the rows they reach), :mod:`.store` (reached keys kept in the
database, once per distinct set), :mod:`.data` (rows for empty tables, so policies have
something to decide on), :mod:`.report` (comparing two states, the Markdown and JSON reports).
"""
