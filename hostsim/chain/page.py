"""The 查验 page: `GET /verify`, for a buyer with a receipt and a browser.

A plain form, server-rendered, so it works without JavaScript: the buyer
pastes the QR payload (`q`) or types code, number, date and check code
(`c`, `n`, `d`, `k`; `t`, the total in fen, is accepted as in
`GET /v1/verify`). The answer is the JSON API's (`queries.verification`)
put into words, including offline 查验 (`not_yet_uploaded`, `forged`) for a
pasted payload that carries the printer's signature, and it shares the API's
per-client rate limit. Everything that came from the request or the ledger is
escaped; each answer carries `id="result"` and `data-result` so that
scripts and tests can read it without parsing prose.

Times for people are in the chain's zone (`taxctl hostsim chain --zone`, ZONE,
Asia/Shanghai unless told otherwise) with the zone named; each keeps its UTC
value in `data-utc` for machines. The layout holds at a phone's 390 px: labels
go above values on narrow screens, codes, numbers and tax ids never break inside
(only names wrap anywhere), and the history table scrolls inside its card.
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web

from device.render import RECEIPT_ZONE, local_time
from hostsim.chain import checking, queries
from hostsim.chain.errors import ChainError, Code

# The long names work too, as on /v1/verify, so a link built for either route works here.
LONG_NAMES = {
    "code": "c",
    "number": "n",
    "date": "d",
    "check_code": "k",
    "total": "t",
    "payload": "q",
}
# The zone times are shown to people in; machine fields (JSON, data-utc) stay UTC.
ZONE: web.AppKey[str] = web.AppKey("page_zone", str)
FIELD_OF = {"c": "code", "n": "number", "d": "date", "k": "check_code", "t": "total"}

# The query string holds the check code: keep it out of Referer headers and caches, and
# allow nothing to run, so an escaping slip elsewhere still cannot become script.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

STATES = {
    "issued": "正常 / issued",
    "partially_credited": "部分红冲 / partially credited",
    "credited": "已全额红冲 / credited in full",
    "credit": "红字发票 / credit note",
}
EVENTS = {
    "issued": "开具 / issued",
    "credited": "红冲 / credited",
    "claimed": "报销 / claimed",
    "credit_confirmed": "红字确认 / credit confirmed",
}
MISMATCH_LABELS = {
    "date": "开票日期 / issue date",
    "check_code": "校验码 / check code",
    "total": "价税合计 / total",
}
EMPTY = "paste the QR payload (taxctl:v1?…) or type code, number, date and check code"
TRAINING = "训练票据 — 不是有效发票 / training document — not a valid invoice"

STYLE = """
body{font:16px/1.5 system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;margin:0;
background:#f4f5f7;color:#1d2330}
main{max-width:44rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
section{background:#fff;border-radius:8px;padding:1rem 1.25rem;margin:0 0 1rem;
box-shadow:0 1px 2px #0002}
label{display:block;margin:.5rem 0 .2rem;font-weight:600}
input,textarea{width:100%;box-sizing:border-box;padding:.45rem;font:inherit;
border:1px solid #9aa3b2;border-radius:4px}
textarea{min-height:4.5rem;font-family:ui-monospace,monospace;font-size:.9rem}
button{margin-top:.8rem;padding:.5rem 1.4rem;font:inherit;border:0;border-radius:4px;
background:#1f5fbf;color:#fff;cursor:pointer}
.result h2{margin:.2rem 0 .6rem}
.authentic{border-left:8px solid #1a7f37}.claimed{border-left:8px solid #b35900}
.not_found,.mismatch,.error,.forged{border-left:8px solid #c62828}
.not_yet_uploaded{border-left:8px solid #1f5fbf}
.claimed h2{color:#b35900}.not_found h2,.mismatch h2,.error h2,.forged h2{color:#c62828}
.authentic h2{color:#1a7f37}
.training{background:#fff3cd;color:#6b4e00;padding:.4rem .6rem;border-radius:4px;
font-weight:700}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0}
dt{color:#555}dd{margin:0;min-width:0}
.nw{white-space:nowrap}.name{overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;margin-top:.5rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #dde1e8;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}
@media (max-width:36rem){main{padding:.5rem}section{padding:.8rem}
dl{grid-template-columns:1fr;gap:0}dt{margin-top:.45rem}}
.hint{color:#555;font-size:.9rem}
"""


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals, from integers (money is never a float here)."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def submitted(query: Any) -> dict[str, str]:
    """The recognised fields of the query string, short names, surrounding blanks dropped."""
    out: dict[str, str] = {}
    for key, value in query.items():
        short = LONG_NAMES.get(key, key)
        if short in FIELD_OF or short == "q":
            out.setdefault(short, value.strip())
    return out


def fields_of(form: dict[str, str]) -> dict[str, Any]:
    """What `checking.query_from` reads: the payload if one was pasted, else the typed fields
    (a blank check code or total counts as not given)."""
    if form.get("q"):
        return {"payload": form["q"]}
    return {
        name: form.get(short, "")
        for short, name in FIELD_OF.items()
        if form.get(short) or name in ("code", "number", "date")
    }


def render_offline(answer: dict[str, Any], ident: str, training: str, zone: str) -> str:
    """not_yet_uploaded and forged: what the printer's signature on the QR says."""
    if answer["result"] == "forged":
        return (
            '<section id="result" class="result forged" data-result="forged">'
            f"<h2>✗ 伪造 / Forged</h2>{training}"
            f"<p>Invoice {escape(ident)} is not on the chain, and its QR code's signature is "
            "not a registered printer's (二维码签名无效，疑似伪造发票):</p>"
            f'<p id="reason">{escape(str(answer.get("reason", "")))}</p></section>'
        )
    details = _rows(
        [
            *_party_rows(answer, ident),
            ("date", "开票日期 / Issue date (UTC)", str(answer.get("date", ""))),
            _total_row(answer),
            ("device", "税控设备 / Printer", str(answer.get("device_id", ""))),
            ("upload-by", "上传期限 / Upload by", str(answer.get("upload_by", ""))),
        ],
        zone,
    )
    overdue = (
        '<p id="overdue">The upload deadline has passed: ask the seller. 已超过上传期限。</p>'
        if answer.get("overdue")
        else ""
    )
    return (
        '<section id="result" class="result not_yet_uploaded" data-result="not_yet_uploaded">'
        f"<h2>⏳ 尚未上传 / Not yet uploaded</h2>{training}"
        "<p>A registered printer signed this receipt; the shop has not uploaded it to the "
        "chain yet. 发票由已登记的税控设备开具，尚未上链。 Check again after the upload "
        f"deadline.</p>{overdue}<dl>{details}</dl></section>"
    )


# How each detail may wrap: names anywhere, codes/numbers/ids/money never inside.
NAMES = frozenset({"seller", "state", "claimed", "reason"})


def _party_rows(answer: dict[str, Any], ident: str) -> list[tuple[str, str, str]]:
    """The seller and the invoice's code and number: what every answer's table starts with."""
    seller = answer.get("seller") or {}
    return [
        ("seller", "销售方 / Seller", str(seller.get("name", ""))),
        ("seller-tax-id", "纳税人识别号 / Tax id", str(seller.get("tax_id", ""))),
        ("invoice", "代码/号码 / Code/number", ident),
    ]


def _total_row(answer: dict[str, Any]) -> tuple[str, str, str]:
    total = answer.get("total")
    return ("total", "价税合计 / Total", "" if total is None else f"¥{yuan(int(total))}")


def _rows(pairs: list[tuple[str, str, str]], zone: str) -> str:
    out = []
    for ident, label, value in pairs:
        if ident in TIMES:
            span = _time(value, zone, ident)
        else:
            kind = "name" if ident in NAMES else "nw"
            span = f'<span id="{ident}" class="{kind}">{escape(value)}</span>'
        out.append(f"<dt>{escape(label)}</dt><dd>{span}</dd>")
    return "".join(out)


TIMES = frozenset({"issued-at", "upload-by"})


def shown_time(value: str, zone: str) -> str:
    """A UTC time from the ledger as people read it: `2026-01-01 08:00:00 +08:00
    (Asia/Shanghai)`; anything else as it is (escaped by the caller)."""
    try:
        return f"{local_time(value, zone)} ({zone})"
    except ValueError:
        return value


def _time(value: str, zone: str, ident: str = "") -> str:
    """The local time, its UTC value in data-utc; it wraps only at its spaces (between
    date, clock, offset and zone name: no line break falls inside a run of digits)."""
    named = f' id="{ident}"' if ident else ""
    return (
        f'<span{named} data-utc="{escape(value, quote=True)}">'
        f"{escape(shown_time(value, zone))}</span>"
    )


def _history(entries: list[dict[str, Any]], zone: str) -> str:
    rows = []
    for entry in entries:
        details = []
        if "total" in entry:
            details.append(f"¥{yuan(int(entry['total']))}")
        if "amount" in entry:
            details.append(f"−¥{yuan(int(entry['amount']))}")
        if "by_code" in entry:
            details.append(f"{entry['by_code']}/{entry.get('by_number', '')}")
        event = str(entry.get("event", ""))
        rows.append(
            f'<tr data-event="{escape(event)}"><td>{escape(EVENTS.get(event, event))}</td>'
            f"<td>{_time(str(entry.get('at', '')), zone)}</td>"
            f"<td>{escape(str(entry.get('height', '')))}</td>"
            f"<td>{escape(' '.join(details))}</td></tr>"
        )
    return (
        "<h3>状态历史 / State history</h3>"
        '<div id="history-scroll" class="scroll"><table id="history"><thead><tr>'
        f"<th>事件 / Event</th><th>时间 / Time ({escape(zone)})</th>"
        f"<th>区块 / Block</th><th>详情 / Details</th></tr></thead><tbody>{''.join(rows)}"
        "</tbody></table></div>"
    )


def render_answer(
    answer: dict[str, Any], history: list[dict[str, Any]], zone: str = RECEIPT_ZONE
) -> str:
    """The result section for one answer of `queries.verification`."""
    result = str(answer["result"])
    ident = f"{answer.get('code', '')}/{answer.get('number', '')}"
    training = f'<p id="training" class="training">{TRAINING}</p>' if answer.get("training") else ""
    if result == "not_found":
        return (
            '<section id="result" class="result not_found" data-result="not_found">'
            "<h2>✗ 查无此票 / Not found</h2>"
            f"<p>No invoice {escape(ident)} is on the chain. 链上没有这张发票。</p></section>"
        )
    if result in ("not_yet_uploaded", "forged"):
        return render_offline(answer, ident, training, zone)
    if result == "mismatch":
        fields = [str(f) for f in answer.get("mismatched", [])]
        items = "".join(
            f'<li data-field="{escape(f)}">{escape(MISMATCH_LABELS.get(f, f))}</li>' for f in fields
        )
        return (
            '<section id="result" class="result mismatch" data-result="mismatch">'
            f"<h2>✗ 信息不符 / Mismatch</h2>{training}"
            f"<p>Invoice {escape(ident)} is on the chain, but these fields do not match it "
            "(以下信息与链上记录不符):</p>"
            f'<ul id="mismatched" data-fields="{escape(" ".join(fields))}">{items}</ul>'
            "</section>"
        )
    claimed = bool(answer.get("claimed"))
    details = _rows(
        [
            *_party_rows(answer, ident),
            ("issued-at", "开票时间 / Issued", str(answer.get("issued_at", ""))),
            _total_row(answer),
            ("state", "状态 / State", STATES.get(str(answer.get("state")), "")),
            ("height", "区块高度 / Block height", str(answer.get("height", ""))),
            ("claimed", "报销 / Claimed", "已报销 / yes" if claimed else "未报销 / no"),
        ],
        zone,
    )
    if claimed:
        head = (
            '<section id="result" class="result claimed" data-result="claimed" '
            'data-claimed="true"><h2>⚠ 已报销 / Already claimed for reimbursement</h2>'
            "<p>This invoice is authentic, but a buyer has already claimed it for "
            "reimbursement: it cannot be claimed again. 此发票已被报销入账，不能重复报销。</p>"
        )
    else:
        head = (
            '<section id="result" class="result authentic" data-result="authentic" '
            'data-claimed="false"><h2>✓ 真票 / Authentic</h2>'
            "<p>This invoice is on the chain and its details match. 查验通过。</p>"
        )
    return f"{head}{training}<dl>{details}</dl>{_history(history, zone)}</section>"


def render_error(exc: ChainError) -> str:
    return (
        '<section id="result" class="result error" data-result="error" '
        f'data-code="{escape(exc.code.value)}">'
        f'<h2>无法查验 / Cannot verify</h2><p id="error">{escape(exc.message)}</p></section>'
    )


def render_page(form: dict[str, str], result: str, *, training_chain: bool) -> str:
    def value(name: str) -> str:
        return escape(form.get(name, ""), quote=True)

    def field(name: str, label: str, hint: str, size: int, mode: str = "numeric") -> str:
        return (
            f'<label for="{name}">{label}</label>'
            f'<input id="{name}" name="{name}" value="{value(name)}" maxlength="{size}" '
            f'inputmode="{mode}" autocomplete="off" placeholder="{hint}">'
        )

    banner = (
        '<p id="training-chain" class="training">训练链 / Training chain: '
        "nothing verified here is a valid invoice.</p>"
        if training_chain
        else ""
    )
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>发票查验 / Invoice verification</title><style>{STYLE}</style></head>
<body><main>
<h1>发票查验 / Invoice verification</h1>{banner}{result}
<section><form id="payload-form" method="get" action="/verify">
<label for="q">二维码内容 / QR payload</label>
<textarea id="q" name="q" rows="3"
 placeholder="taxctl:v1?c=…&amp;n=…&amp;d=…&amp;k=…">{value("q")}</textarea>
<button id="verify-payload" type="submit">查验 / Verify</button></form></section>
<section><form id="fields-form" method="get" action="/verify">
<p class="hint">或手工输入 / or type the fields printed on the receipt</p>
{field("c", "发票代码 / Invoice code", "12 digits", 12)}
{field("n", "发票号码 / Invoice number", "8 digits", 8)}
{field("d", "开票日期 / Issue date", "YYYY-MM-DD", 10, "text")}
{field("k", "校验码 / Check code", "20 digits, or the last 6", 20)}
<button id="verify-fields" type="submit">查验 / Verify</button></form></section>
</main></body></html>
"""


def respond(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


async def verify_page(request: web.Request) -> web.Response:
    chain = request.app[queries.CHAIN]
    form = submitted(request.query)
    if not form:
        return respond(render_page(form, "", training_chain=chain.training))
    try:
        if not any(form.values()):
            raise ChainError(Code.BAD_REQUEST, EMPTY)
        queries.limit_verify(request)
        query = checking.query_from(fields_of(form))
    except ChainError as exc:
        if exc.code not in (Code.BAD_REQUEST, Code.RATE_LIMITED):
            raise
        page = render_page(form, render_error(exc), training_chain=chain.training)
        response = respond(page, exc.http_status)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    answer = queries.verification(request, query)
    history = (
        chain.ledger.history(query.code, query.number) if answer["result"] == "authentic" else []
    )
    result = render_answer(answer, history, request.app.get(ZONE, RECEIPT_ZONE))
    return respond(render_page(form, result, training_chain=chain.training))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/verify", verify_page)
