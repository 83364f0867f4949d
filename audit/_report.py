"""Per-organization compliance report: one self-contained HTML page and the same as JSON.

The report is what a compliance officer files: who the organization is, whether its log
verified (and every finding if not), its cumulative ε per round against the budget —
both as the organization logged it and as the auditor recomputed it — the rounds it
joined, its refusals, and its policy and key events. The HTML embeds its styles and an
SVG plot and loads nothing, so it can be archived or mailed as one file; a strict
Content-Security-Policy keeps a hostile log from injecting active content, and every
value taken from a log is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.policies import OrganizationPolicy

from ._chain import check_chain
from ._events import EventType, payload_problems
from ._findings import Severity, VerificationReport
from ._keys import key_fingerprint
from ._record import format_time
from ._verify import verify_log

REPORT_FORMAT = "fedhft-compliance-report/v1"


def build_report(
    log_path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey,
    server_log: str | os.PathLike[str] | None = None,
    server_public_key: Ed25519PublicKey | None = None,
    policy: OrganizationPolicy | None = None,
    now: datetime | None = None,
    epsilon_check: Literal["every", "last"] = "every",
) -> tuple[dict[str, Any], VerificationReport]:
    """Verify the log and gather the report's content (the `report.json` document)."""
    path = Path(log_path)
    data = path.read_bytes()
    verification = verify_log(
        path,
        public_key=public_key,
        server_log=server_log,
        server_public_key=server_public_key,
        policy=policy,
        epsilon_check=epsilon_check,
    )
    chain = check_chain(data, public_key=None, source=str(path))
    entries = [
        entry
        for entry in chain.records
        if not payload_problems(entry.record.event, entry.record.payload)
    ]

    def of(event: EventType) -> list[dict[str, Any]]:
        return [
            {"seq": e.record.seq, "time": e.record.time, **e.record.payload_dict()}
            for e in entries
            if e.record.event == event
        ]

    policies_loaded = of(EventType.POLICY_LOADED)
    last_policy = policies_loaded[-1] if policies_loaded else {}
    if policy is not None:
        budget: dict[str, Any] = {
            "epsilon": policy.privacy.epsilon,
            "delta": policy.privacy.delta,
            "accountant": policy.privacy.accountant.value,
            "source": "policy file",
        }
    elif "epsilon_budget" in last_policy:
        budget = {
            "epsilon": last_policy.get("epsilon_budget"),
            "delta": last_policy.get("delta"),
            "accountant": last_policy.get("accountant"),
            "source": "policy_loaded record (not checked against a policy file)",
        }
    else:
        budget = {"epsilon": None, "delta": None, "accountant": None, "source": "unknown"}

    rounds: dict[int, dict[str, Any]] = {}

    def round_row(number: int) -> dict[str, Any]:
        return rounds.setdefault(
            number,
            {
                "round": number,
                "clusters": [],
                "spends": [],
                "epsilon_logged": None,
                "epsilon_recomputed": None,
                "uploads": 0,
                "receipts": 0,
                "refusals": [],
            },
        )

    for joined in of(EventType.ROUND_JOINED):
        row = round_row(joined["round"])
        row["clusters"] = sorted(set(row["clusters"]) | set(joined["clusters"]))
    for point in verification.epsilon:
        row = round_row(point.round)
        row["spends"].append(
            {"seq": point.seq, "mechanism": point.mechanism, "accountant": point.accountant}
        )
        row["epsilon_logged"] = point.logged
        row["epsilon_recomputed"] = point.recomputed
    for spend in of(EventType.PRIVACY_SPEND):
        for item in round_row(spend["round"])["spends"]:
            if item["seq"] == spend["seq"]:
                item.update(
                    noise_multiplier=spend["noise_multiplier"],
                    sample_rate=spend["sample_rate"],
                    steps=spend["steps"],
                    max_grad_norm=spend["max_grad_norm"],
                    noise_source=spend["noise_source"],
                )
    for commit in of(EventType.UPDATE_COMMITTED):
        round_row(commit["round"])["uploads"] += 1
    for receipt in of(EventType.AGGREGATION_RECEIPT):
        round_row(receipt["round"])["receipts"] += 1
    refusals = of(EventType.REFUSAL)
    for refusal in refusals:
        round_row(refusal["round"])["refusals"].append(refusal["reason"])

    final = verification.epsilon[-1] if verification.epsilon else None
    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "generated_at": format_time(now or datetime.now(UTC)),
        "organization": verification.party,
        "consortium": last_policy.get("consortium"),
        "log": {
            "path": str(path),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "records": verification.records,
            "last_seq": verification.last_seq,
            "head_sha256": verification.head_sha256,
            "signing_key_fingerprint": key_fingerprint(public_key),
            "first_time": chain.records[0].record.time if chain.records else None,
            "last_time": chain.records[-1].record.time if chain.records else None,
        },
        "verification": verification.to_json(),
        "budget": budget,
        "epsilon": {
            "logged": final.logged if final else 0.0,
            "recomputed": final.recomputed if final else 0.0,
            "series": [
                {
                    "seq": point.seq,
                    "round": point.round,
                    "mechanism": point.mechanism,
                    "accountant": point.accountant,
                    "delta": point.delta,
                    "logged": point.logged,
                    "recomputed": point.recomputed,
                }
                for point in verification.epsilon
            ],
        },
        "rounds": [rounds[number] for number in sorted(rounds)],
        "rounds_joined": sorted({joined["round"] for joined in of(EventType.ROUND_JOINED)}),
        "refusals": refusals,
        "policies_loaded": policies_loaded,
        "key_events": of(EventType.KEY_EVENT),
        "noise_sources": sorted({str(s["noise_source"]) for s in of(EventType.PRIVACY_SPEND)}),
    }
    return document, verification


def write_report(document: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `report.html` and `report.json` into ``out_dir`` (created if needed)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    html_path = folder / "report.html"
    json_path.write_text(
        json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    html_path.write_text(render_html(document), encoding="utf-8")
    return html_path, json_path


# ----------------------------------------------------------------------------- rendering


def _e(value: object) -> str:
    return html.escape("—" if value is None else str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "∞"
        # Exponents without padding: 1e-5, not 1e-05.
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:.{digits}g}")
    return _e(value)


def _percent(share: float | None) -> str:
    if share is None:
        return "—"
    # Never round a spend just under the budget up to 100 %.
    text = f"{share * 100:.0f}%"
    if share < 1 and text == "100%":
        text = f"{math.floor(share * 1000) / 10:.1f}%"
    return text


def _nice_step(span: float, target_ticks: int) -> float:
    raw = span / max(target_ticks, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def render_plot(
    series: Sequence[Mapping[str, Any]],
    budget: float | None,
    *,
    refused_rounds: Sequence[int] = (),
    width: int = 1040,
) -> str:
    """Inline SVG of cumulative ε per round: recomputed, logged, the budget line, and a
    mark on the axis at each refused round."""
    height, left, right, top, bottom = 360, 64, 24, 24, 52
    plot_w, plot_h = width - left - right, height - top - bottom
    per_round: dict[int, Mapping[str, Any]] = {}
    for point in series:
        per_round[int(point["round"])] = point  # the last spend of a round is cumulative
    rounds = sorted(per_round)
    if not rounds:
        return (
            f'<svg class="plot" viewBox="0 0 {width} 80" role="img" '
            'aria-label="no privacy spend logged"><text x="24" y="48" class="muted">'
            "No privacy spend logged.</text></svg>"
        )
    values = [
        float(v)
        for point in per_round.values()
        for v in (point.get("logged"), point.get("recomputed"))
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    y_max = max([*values, budget or 0.0, 1e-9]) * 1.12
    y_step = _nice_step(y_max, 6)
    y_max = math.ceil(y_max / y_step) * y_step
    refused = sorted(set(refused_rounds))
    x_min, x_max = min([rounds[0], *refused]), max([rounds[-1], *refused])
    if x_min == x_max:
        x_min, x_max = x_min - 1, x_max + 1

    def x(round_number: float) -> float:
        return left + (round_number - x_min) / (x_max - x_min) * plot_w

    def y(value: float) -> float:
        return top + plot_h - value / y_max * plot_h

    parts = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="cumulative epsilon per round against the budget" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    ticks = round(y_max / y_step)
    for index in range(ticks + 1):
        value = index * y_step
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'class="grid"/>'
            f'<text x="{left - 8}" y="{y(value) + 4:.1f}" class="tick" text-anchor="end">'
            f"{value:g}</text>"
        )
    x_step = max(1, math.ceil(_nice_step(x_max - x_min, 10)))
    first_tick = math.ceil(x_min / x_step) * x_step
    for tick in range(first_tick, x_max + 1, x_step):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top + plot_h}" '
            f'y2="{top + plot_h + 5}" class="axis"/>'
            f'<text x="{x(tick):.1f}" y="{top + plot_h + 20}" class="tick" '
            f'text-anchor="middle">{tick}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'class="axis"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" class="label" '
        'text-anchor="middle">round</text>'
        f'<text x="16" y="{top + plot_h / 2:.1f}" class="label" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">cumulative ε</text>'
    )
    if budget is not None:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(budget):.1f}" '
            f'y2="{y(budget):.1f}" class="budget"/>'
            f'<text x="{left + plot_w - 4}" y="{y(budget) - 7:.1f}" class="budget-label" '
            f'text-anchor="end">budget ε = {budget:g}</text>'
        )

    def polyline(key: str, css: str) -> None:
        points = [
            (x(number), y(float(per_round[number][key])))
            for number in rounds
            if isinstance(per_round[number].get(key), int | float)
            and math.isfinite(float(per_round[number][key]))
        ]
        if not points:
            return
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f'<polyline points="{path}" class="{css}"/>')
        for px, py in points:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" class="{css}-dot"/>')

    polyline("recomputed", "recomputed")
    polyline("logged", "logged")
    for number in refused:
        cx, cy = x(number), top + plot_h
        parts.append(
            f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} '
            f'M{cx - 5:.1f},{cy + 5:.1f} L{cx + 5:.1f},{cy - 5:.1f}" class="refused"/>'
        )
    legend_x = left + 12
    refused_legend = (
        '<path d="M320,-5 L330,5 M320,5 L330,-5" class="refused"/>'
        '<text x="336" y="4">refused round</text>'
        if refused
        else ""
    )
    parts.append(
        f'<g class="legend" transform="translate({legend_x},{top + 8})">'
        f'<rect x="-8" y="-14" width="{420 if refused else 310}" height="26" rx="4" '
        'class="legend-box"/>'
        '<line x1="0" x2="22" y1="0" y2="0" class="recomputed"/>'
        '<text x="28" y="4">recomputed by auditor</text>'
        '<line x1="176" x2="198" y1="0" y2="0" class="logged"/>'
        f'<text x="204" y="4">logged by client</text>{refused_legend}</g>'
    )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
:root { --ink:#1d2733; --muted:#5b6b7c; --line:#d9e0e7; --bg:#f5f7f9; --ok:#1f7a4d;
  --ok-bg:#e3f4ea; --bad:#b42318; --bad-bg:#fdecea; --warn:#8a5a00; --warn-bg:#fff4d6;
  --accent:#1f5fa8; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color:var(--ink); background:var(--bg); }
header { background:#17324d; color:#fff; padding:22px 40px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 0; color:#c7d5e3; font-size:14px; }
main { max-width:1120px; margin:0 auto; padding:24px 40px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:20px 24px;
  margin-bottom:20px; }
h2 { font-size:17px; margin:0 0 12px; }
.status { display:flex; align-items:center; gap:20px; }
.badge { font-weight:700; font-size:18px; padding:8px 18px; border-radius:6px;
  letter-spacing:.04em; white-space:nowrap; }
.badge.ok { color:var(--ok); background:var(--ok-bg); border:1px solid #b5dfc6; }
.badge.bad { color:var(--bad); background:var(--bad-bg); border:1px solid #f3c2bd; }
.status p { margin:0; }
.figures { display:grid; grid-template-columns:repeat(5, 1fr); gap:12px; margin-top:16px; }
.figure { background:var(--bg); border-radius:6px; padding:10px 14px; }
.figure .value { font-size:22px; font-weight:600; }
.figure .name { color:var(--muted); font-size:13px; }
.meter { height:8px; background:var(--line); border-radius:4px; margin-top:6px;
  overflow:hidden; }
.meter span { display:block; height:100%; background:var(--accent); }
.meter span.over { background:var(--bad); }
table { width:100%; border-collapse:collapse; font-size:14px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:13px; background:var(--bg);
  white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.sev { font-weight:600; font-size:12px; padding:2px 8px; border-radius:10px; }
.sev.error { color:var(--bad); background:var(--bad-bg); }
.sev.warning { color:var(--warn); background:var(--warn-bg); }
.sev.notice { color:var(--muted); background:var(--bg); }
.muted { color:var(--muted); }
code.check { white-space:nowrap; }
code { font:13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  word-break:break-all; }
dl { display:grid; grid-template-columns:220px 1fr; gap:4px 16px; margin:0; }
dt { color:var(--muted); }
dd { margin:0; }
svg.plot { width:100%; height:auto; display:block; }
svg .grid { stroke:#edf1f5; stroke-width:1; }
svg .axis { stroke:#9aa8b6; stroke-width:1; }
svg .tick { fill:var(--muted); font-size:12px; }
svg .label { fill:var(--muted); font-size:13px; }
svg .budget { stroke:var(--bad); stroke-width:2; stroke-dasharray:8 6; }
svg .budget-label { fill:var(--bad); font-size:13px; font-weight:600; }
svg .recomputed { fill:none; stroke:var(--accent); stroke-width:2.5; }
svg .recomputed-dot { fill:var(--accent); }
svg .logged { fill:none; stroke:#e08a00; stroke-width:2; stroke-dasharray:5 4; }
svg .logged-dot { fill:#fff; stroke:#e08a00; stroke-width:2; }
svg .refused { stroke:var(--bad); stroke-width:2.5; fill:none; }
svg .legend text { fill:var(--ink); font-size:13px; }
svg .legend-box { fill:#fff; stroke:var(--line); }
footer { color:var(--muted); font-size:13px; text-align:center; padding-bottom:24px; }
"""


def _table(headers: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f'<th class="num">{h}</th>' if num else f"<th>{h}</th>" for h, num in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if headers[index][1] else f"<td>{cell}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(document: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    verification = document["verification"]
    findings = verification["findings"]
    budget = document["budget"]
    epsilon = document["epsilon"]
    log = document["log"]
    ok = bool(verification["ok"])
    counts = {
        severity.value: sum(1 for f in findings if f["severity"] == severity.value)
        for severity in Severity
    }
    spent = epsilon["recomputed"] if epsilon["recomputed"] is not None else epsilon["logged"]
    budget_eps = budget["epsilon"]
    share = (spent / budget_eps) if budget_eps else None
    org = document["organization"] or "unknown organization"

    status_text = (
        f"All {log['records']} records verify: hash chain intact, every signature valid, "
        "ε recomputed from the logged mechanisms matches, and every upload is receipted."
        if ok
        else f"{counts['error']} problem(s) found in {log['records']} records; see the "
        "findings below. Nothing in this log should be relied on until they are explained."
    )
    if counts["warning"]:
        status_text += f" {counts['warning']} warning(s)."

    meter = ""
    if share is not None:
        width = min(share, 1.0) * 100
        over = "over" if share > 1 else ""
        meter = f'<div class="meter"><span class="{over}" style="width:{width:.1f}%"></span></div>'
    figures = [
        (_num(spent), "cumulative ε (recomputed)" + meter),
        (_num(budget_eps), f"budget ε at δ = {_num(budget['delta'], 3)}"),
        (_percent(share), "of the budget spent"),
        (str(len(document["rounds_joined"])), "rounds joined"),
        (str(len(document["refusals"])), "refusals"),
    ]
    figures_html = "".join(
        f'<div class="figure"><div class="value">{value}</div><div class="name">{name}</div></div>'
        for value, name in figures
    )

    sections: list[str] = []
    sections.append(
        '<section><div class="status">'
        f'<div class="badge {"ok" if ok else "bad"}">{"VERIFIED" if ok else "FAILED"}</div>'
        f"<p>{_e(status_text)}</p></div>"
        f'<div class="figures">{figures_html}</div></section>'
    )
    plot_budget = budget_eps if isinstance(budget_eps, int | float) else None
    plot = render_plot(
        epsilon["series"],
        plot_budget,
        refused_rounds=[int(r["round"]) for r in document["refusals"]],
    )
    sections.append(
        "<section><h2>Cumulative privacy spend per round</h2>"
        f"{plot}"
        f'<p class="muted">Accountant: {_e(budget["accountant"])}; budget from the '
        f"{_e(budget['source'])}. Each point is ε after the last release of the round; "
        "the auditor's curve is recomputed from the logged noise multiplier, sample rate "
        "and steps of every release, independently of the client's numbers.</p></section>"
    )
    if findings:
        rows = [
            [
                f'<span class="sev {_e(f["severity"])}">{_e(f["severity"])}</span>',
                _e(f["line"]),
                _e(f["seq"]),
                f'<code class="check">{_e(f["check"])}</code>',
                _e(f["message"])
                + (
                    f'<br><span class="muted">{_e(f["source"])}</span>'
                    if f["source"] != log["path"]
                    else ""
                ),
            ]
            for f in sorted(findings, key=lambda f: (f["line"] is None, f["line"] or 0))
        ]
        sections.append(
            f"<section><h2>Findings ({len(findings)})</h2>"
            + _table(
                [
                    ("severity", False),
                    ("line", True),
                    ("seq", True),
                    ("check", False),
                    ("finding", False),
                ],
                rows,
            )
            + "</section>"
        )
    round_rows = []
    for row in document["rounds"]:
        mechanisms = ", ".join(
            f"{_e(s['mechanism'])} (σ={_num(s.get('noise_multiplier'))}, "
            f"q={_num(s.get('sample_rate'))}, {_e(s.get('steps'))} "
            f"step{'' if s.get('steps') == 1 else 's'})"
            for s in row["spends"]
        )
        round_rows.append(
            [
                _e(row["round"]),
                _e(", ".join(str(c) for c in row["clusters"])) if row["clusters"] else "—",
                mechanisms or "—",
                _num(row["epsilon_logged"]),
                _num(row["epsilon_recomputed"]),
                _e(row["uploads"]),
                _e(row["receipts"]),
                _e("; ".join(row["refusals"])) if row["refusals"] else "—",
            ]
        )
    sections.append(
        "<section><h2>Rounds</h2>"
        + (
            _table(
                [
                    ("round", True),
                    ("clusters", False),
                    ("releases", False),
                    ("ε logged", True),
                    ("ε recomputed", True),
                    ("uploads", True),
                    ("receipts", True),
                    ("refusal", False),
                ],
                round_rows,
            )
            if round_rows
            else '<p class="muted">No rounds logged.</p>'
        )
        + "</section>"
    )
    if document["refusals"]:
        refusal_rows = [
            [
                _e(r["seq"]),
                _e(r["time"]),
                _e(r["round"]),
                _e(r["reason"]),
                _e(
                    ", ".join(
                        f"{k}={v}"
                        for k, v in r.items()
                        if k not in {"seq", "time", "round", "reason"}
                    )
                )
                or "—",
            ]
            for r in document["refusals"]
        ]
        sections.append(
            "<section><h2>Refusals</h2>"
            + _table(
                [
                    ("seq", True),
                    ("time", False),
                    ("round", True),
                    ("reason", False),
                    ("details", False),
                ],
                refusal_rows,
            )
            + "</section>"
        )
    events = [
        [_e(p["seq"]), _e(p["time"]), "policy loaded", f"<code>{_e(p['policy_sha256'])}</code>"]
        for p in document["policies_loaded"]
    ] + [
        [
            _e(k["seq"]),
            _e(k["time"]),
            f"key: {_e(k['kind'])}",
            f"<code>{_e(k['fingerprint'])}</code>",
        ]
        for k in document["key_events"]
    ]
    if events:
        events.sort(key=lambda row: int(row[0]) if row[0].isdigit() else 0)
        sections.append(
            "<section><h2>Policy and key events</h2>"
            + _table([("seq", True), ("time", False), ("event", False), ("hash", False)], events)
            + "</section>"
        )
    sections.append(
        "<section><h2>Log</h2><dl>"
        f"<dt>file</dt><dd><code>{_e(log['path'])}</code></dd>"
        f"<dt>file SHA-256</dt><dd><code>{_e(log['sha256'])}</code></dd>"
        f"<dt>records</dt><dd>{_e(log['records'])} ({_e(log['first_time'])} to "
        f"{_e(log['last_time'])})</dd>"
        f"<dt>head record hash</dt><dd><code>{_e(log['head_sha256'])}</code> "
        f"(seq {_e(log['last_seq'])})</dd>"
        "<dt>signing key fingerprint</dt>"
        f"<dd><code>{_e(log['signing_key_fingerprint'])}</code></dd>"
        f"<dt>server log</dt><dd>{_e(verification['server_log'])}</dd>"
        f"<dt>receipts verified</dt><dd>{_e(verification['checked_receipts'])}</dd>"
        f"<dt>noise sources</dt><dd>{_e(', '.join(document['noise_sources']) or '—')}</dd>"
        "</dl></section>"
    )
    consortium = document["consortium"]
    subtitle = f"{org}" + (f" · consortium {consortium}" if consortium else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Compliance report — {_e(org)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Privacy compliance report</h1><p>{_e(subtitle)} · generated "
        f"{_e(document['generated_at'])}</p></header><main>"
        + "".join(sections)
        + "</main><footer>fedhft audit report · format "
        f"{_e(document['format'])} · verify again with <code>fedhft audit verify</code>"
        "</footer></body></html>\n"
    )
