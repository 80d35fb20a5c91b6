"""Small HTML helpers shared by the reports: escaping, tables, embedded images, the page."""
import base64
import html
from pathlib import Path

from ..utils import write_text_atomic

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
nav{position:sticky;top:0;background:#263238;padding:.4em 1em;z-index:2}
nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-size:.9em}
main{padding:1em 2em;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:2px solid #263238;padding-top:.6em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eceff1}
img.fig{max-width:100%;background:#000;display:block;margin:.3em 0}
.ok{color:#1b5e20;font-weight:bold}.bad{color:#b71c1c;font-weight:bold}.warn{color:#e65100}
.flag{background:#ffebee;border-left:4px solid #b71c1c;padding:.2em .6em;margin:.2em 0}
.note{background:#fff8e1;border-left:4px solid #ff8f00;padding:.2em .6em;margin:.2em 0}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
code{font-size:.85em;word-break:break-all}
details{margin:.4em 0}
"""


def esc(value):
    return html.escape("" if value is None else str(value))


def fmt(value, digits=1, unit=""):
    """A number for a reader: fixed digits, 'n/a' for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}"
    return esc(value)


def table(rows, header=None):
    """rows: list of lists of HTML strings (already escaped)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</table>")
    return "\n".join(out)


def kv_table(pairs):
    return table([[f"<b>{esc(k)}</b>", v] for k, v in pairs])


def embedded_png(data, alt):
    """An <img> holding PNG bytes as base64, so the page is self-contained."""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def page(title, nav, body):
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head>\n<body><nav>{links}</nav><main>\n{body}\n</main></body></html>\n")


def write_atomic(text, path):
    write_text_atomic(text, path)
    return Path(path)
