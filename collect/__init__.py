"""Collection stage (DESIGN §6): sample and probe traces from an OpenAI-compatible server.

Not built yet. Until it is, stores come from importers (``ttsgym import autotts``) or the
synthetic generator; both write the same tables this stage will.
"""
