"""The shell of every HTML report page: one self-contained file, nothing fetched, ever.

A Content-Security-Policy forbids loading anything from anywhere, so a page shows the same thing
offline, years later, as on the day it was made: the styles and the few lines of script that make
tables sortable are inline. A script error is recorded in the DOM (headless tests read it).
:func:`page` lays out the head, the header, the main part and the footer; a report's own module
writes what goes in them, with :func:`sortable_table`, :func:`card_list`, :func:`esc` and
:func:`number`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)

STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
  max-width: 72rem; padding: 0 1.5rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f2f4f6; }
th.sortable { cursor: pointer; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; padding: 0; list-style: none; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6rem .9rem; min-width: 9rem; }
.card .value { font-size: 1.5rem; font-weight: 600; display: block; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85rem; color: #555; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .85rem; }
.ok { color: #1e8449; } .bad { color: #b03a2e; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #b9770e; padding: .4rem .8rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.compact td, .compact th { white-space: nowrap; font-size: .82rem; }
@media print { th.sortable { cursor: auto; } .pair { display: block; } }
"""

# Recorded first so that any later script error lands in the DOM (a headless test reads it).
_ERRORS_SCRIPT = """
window.pageErrors = [];
window.addEventListener("error", function (event) {
  window.pageErrors.push(String(event.message));
  document.documentElement.setAttribute("data-js-errors", window.pageErrors.join(" | "));
});
"""

_SORT_SCRIPT = """
(function () {
  function value(cell) {
    var text = cell.getAttribute("data-sort") || cell.textContent.trim();
    var number = Number(text.replace(/[,%+]/g, ""));
    return text !== "" && !isNaN(number) ? number : text.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, column) {
      th.classList.add("sortable");
      th.setAttribute("tabindex", "0");
      th.setAttribute("aria-sort", "none");
      function sort() {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var up = th.getAttribute("aria-sort") !== "ascending";
        rows.sort(function (a, b) {
          var x = value(a.cells[column]), y = value(b.cells[column]);
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        table.querySelectorAll("th").forEach(function (other) {
          other.setAttribute("aria-sort", "none");
        });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        rows.forEach(function (row) { body.appendChild(row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def esc(value: object) -> str:
    """*value* as HTML text or attribute value (None as nothing)."""
    return escape("" if value is None else str(value), quote=True)


def number(value: int | None) -> str:
    """A count with thousands separators; a dash for none."""
    return "–" if value is None else f"{value:,}"


def page(
    *,
    title: str,
    generator: str,
    header: Iterable[str],
    main: Iterable[str],
    generated_at: str,
    report_format: str,
    colophon: str,
    style: str = "",
) -> str:
    """The whole page: *header* and *main* are its parts in order; the footer names
    ``aidr-gate`` *generator*, when and in which report format, then *colophon* (HTML)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="aidr-gate {esc(generator)}">',
        f"<title>{esc(title)}</title>",
        f"<script>{_ERRORS_SCRIPT}</script>",
        f"<style>{STYLE}{style}</style></head><body>",
        "<header>",
        *header,
        "</header><main>",
        *main,
        "</main><footer>",
        f'<p class="sub">Generated by <code>aidr-gate {esc(generator)}</code> at '
        f"{esc(generated_at)} (report format {esc(report_format)}){colophon}</p>",
        "</footer>",
        f"<script>{_SORT_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def card_list(cards: Iterable[tuple[str, str, int | None]], *, id_prefix: str) -> str:
    """Totals as cards, each (key, label, value): the key is its class and, after *id_prefix*,
    its id."""
    items = "".join(
        f'<li class="card {key}" id="{id_prefix}{key}"><span class="value">{number(value)}</span>'
        f"{esc(label)}</li>"
        for key, label, value in cards
    )
    return f'<ul class="cards">{items}</ul>'


def sortable_table(
    table_id: str,
    caption: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Sequence[int] = (),
    compact: bool = False,
) -> str:
    """A table sorted by a click on any column head; the *numeric* columns' whole numbers right
    aligned and sorted as numbers; *compact* tables keep a row on one line and scroll sideways."""
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>{esc(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in numeric and isinstance(cell, int):
                cells.append(f'<td class="num" data-sort="{cell}">{number(cell)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}">None.</td></tr>')
    markup = (
        f'<table id="{esc(table_id)}" class="sortable{" compact" if compact else ""}">'
        f"<caption>{esc(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    return f'<div class="scroll">{markup}</div>' if compact else markup
