"""LLM search over controller code (DESIGN §5).

Not built yet: the replay engine, baselines and β-family it will search against live in
``ttsgym.env`` and ``ttsgym.controllers``.
"""
