"""Access patterns over time: signals packs test, bounded state, a fleet's shared view, a report.

Nothing is imported here: ``policy.pack`` reads :mod:`aidr_gate.patterns.conditions` while the
configuration loader is itself being imported.
"""
