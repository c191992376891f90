"""Any page in the report's frame (its CSS, the inlined Vega runtime, its Content-Security-Policy): the
`qscope-eval serve` index uses it, so the service's pages work offline and run only their own scripts."""

from __future__ import annotations

import base64
import hashlib

from qscope_eval.report.html import _CSS, _EMBED_JS, _ERRORS_JS, _e, _vega_bundle, embed_json


def page_html(title: str, body: str, specs: dict[str, dict]) -> str:
    """Any page in the report's frame: its CSS, the inlined Vega runtime and CSP; charts go in
    `<figure class="chart" id="chart-NAME">` elements of `body` (used by `qscope-eval serve`)."""
    scripts = [_ERRORS_JS, f"\n{_vega_bundle()}\n", _EMBED_JS % embed_json(specs)]
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'" for js in scripts)
    csp = (f"default-src 'none'; script-src {hashes} 'unsafe-eval'; style-src 'unsafe-inline'; "
           "img-src data: blob:; font-src data:")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style>\n"
            f"<script>{scripts[0]}</script>\n<script>{scripts[1]}</script></head>\n<body><main>"
            f'<header><h1>{_e(title)}</h1></header><p id="render-error"></p>{body}</main>\n'
            f"<script>{scripts[2]}</script>\n</body></html>\n")
