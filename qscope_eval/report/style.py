"""The report's stylesheet (also the frame of `serve`'s pages, report/page.py).

Readable from 800 px up: the page never scrolls sideways; a table wider than the page scrolls inside its own
`.scroll` box, long benchmark names wrap after their underscores (`<wbr>`), charts' SVGs shrink to the width.
"""

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#4e79a7;--keep:#2e7d32;--drop:#b3261e}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 32px 60px;overflow-wrap:break-word}
@media (max-width:900px){main{padding:16px 14px 40px}}
header{border-bottom:3px solid var(--accent);margin-bottom:20px;padding-bottom:12px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 10px;padding-bottom:4px;
border-bottom:1px solid var(--line)}
.meta{color:var(--muted);font-size:13px}.meta code{background:var(--bg);padding:1px 5px;border-radius:4px;
overflow-wrap:anywhere}
.headline{font-size:17px;margin:14px 0 4px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;margin:16px 0}
.card{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .v{font-size:24px;font-weight:650}.card .v small{font-size:13px;font-weight:400;color:var(--muted)}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.lead{font-size:16px}.muted{color:var(--muted);font-size:13px}
.warnings{background:#fff8e1;border:1px solid #f0c36d;border-radius:8px;padding:10px 16px 10px 36px}
.warnings li{margin:4px 0}
.scroll{overflow-x:auto;max-width:100%;margin:10px 0}
table{border-collapse:collapse;width:100%;margin:0;font-size:14px}
table.num td:not(:first-child),table.drift td{white-space:nowrap}
th,td{border-bottom:1px solid var(--line);padding:6px 10px;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600}
table.num td:not(:first-child),table.num th:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
table.drift td:nth-child(n+3),table.drift th:nth-child(n+3){text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;background:#eee}
.badge.keep{background:#e6f4ea;color:var(--keep)}.badge.drop{background:#fce8e6;color:var(--drop)}
.badge.warn,.badge.changed,.badge.removed{background:#fff3cd;color:#7a5b00}.badge.new{background:#e8f0fe}
.text{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
max-height:9em;overflow:auto;background:var(--bg);padding:4px 6px;border-radius:4px;word-break:break-word}
.chart{margin:18px 0;max-width:100%;overflow-x:auto;vertical-align:top}
.chart svg{max-width:100%;height:auto}
#render-error{display:none;color:var(--drop);font-weight:600}
footer{margin-top:40px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
"""
