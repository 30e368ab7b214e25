"""One page shell for camtool's HTML reports (the export gallery, the evaluation report): a
self-contained page that opens from ``file://`` with no network, its data as script-safe JSON in a
``<script type="application/json">`` element, read by the page's own script.

The Content-Security-Policy allows nothing from outside: images from the page's folder (or data
URLs), inline styles and the inline script."""

from __future__ import annotations

import html
import json
from typing import Any

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>
"""


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: no ``</script>`` or ``<!--``
    can form (``<``, ``>`` and ``&`` are written as ``\\u`` escapes), ASCII only, no NaN.

    Raises:
        ValueError: ``data`` holds NaN or an infinity (not JSON).
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_page(title: str, style: str, body: str, script: str, data: Any) -> str:
    """A whole page: ``title`` (escaped), the CSS ``style``, the ``body`` markup (camtool's own,
    not escaped: data goes in ``data``), then ``data`` as JSON in ``<script id="data">`` and the
    page's ``script``, which reads it with
    ``JSON.parse(document.getElementById("data").textContent)``."""
    return (
        _HEAD.format(title=html.escape(title))
        + style
        + "</style></head>\n<body>\n"
        + body
        + '<script id="data" type="application/json">'
        + script_json(data)
        + "</script>\n<script>\n"
        + script
        + "</script></body></html>\n"
    )
