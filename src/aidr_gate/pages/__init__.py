"""What every HTML report page shares (replay, screening review, access patterns).

- :mod:`~aidr_gate.pages.shell`: the page itself: its head (a Content-Security-Policy that loads
  nothing, the styles, the script error recorder), sortable tables, total cards, the footer.
- :mod:`~aidr_gate.pages.charts`: inline SVG charts (each page puts a table of the same numbers
  beside each chart).

Each report's own module (``replay/page.py``, ``screening/page.py``, ``patterns/page.py``) writes
only its content.
"""
