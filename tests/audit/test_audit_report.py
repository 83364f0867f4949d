"""Compliance report: the same content as HTML and JSON, self-contained and escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from audit_helpers import DEFAULT_PLAN, Federation, lines_of, write_lines
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.audit import AuditLog, EventType, build_report, write_report
from fedhft.policies import OrganizationPolicy


def _build(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> dict[str, object]:
    document, _ = build_report(
        federation.client_log,
        public_key=client_key.public_key(),
        server_log=federation.server_log,
        server_public_key=server_key.public_key(),
        policy=policy,
    )
    return document


def test_report_json_carries_the_epsilon_series_budget_and_status(
    tmp_path: Path,
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """report.json holds ε per round (logged and recomputed), the policy budget, the
    rounds joined and a passing verification."""
    document = _build(federation, client_key, server_key, policy)
    html_path, json_path = write_report(document, tmp_path / "out")
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert loaded["verification"]["ok"] is True
    assert loaded["organization"] == "st-mary-hospital"
    assert loaded["consortium"] == "northern-health-finance"
    assert loaded["budget"] == {
        "epsilon": 4.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "source": "policy file",
    }
    series = loaded["epsilon"]["series"]
    assert [point["recomputed"] for point in series] == federation.epsilons
    assert [point["round"] for point in series] == list(range(len(DEFAULT_PLAN)))
    assert loaded["rounds_joined"] == list(range(len(DEFAULT_PLAN)))
    assert all(row["uploads"] == row["receipts"] == 1 for row in loaded["rounds"])
    assert html_path.read_text(encoding="utf-8").count("<circle") == 2 * len(DEFAULT_PLAN)


def test_html_is_self_contained(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """The page loads nothing: no scripts, no external URLs; a strict CSP; inline SVG."""
    from fedhft.audit._report import render_html

    page = render_html(_build(federation, client_key, server_key, policy))
    assert "<script" not in page.lower()
    urls = re.findall(r"(?:src|href)\s*=", page, flags=re.IGNORECASE)
    assert urls == []
    assert "default-src 'none'" in page
    assert "<svg" in page and "VERIFIED" in page
    assert 'class="refused"' not in page  # no refusals, no refusal legend


def test_a_spend_just_under_the_budget_is_not_shown_as_100_percent() -> None:
    """99.94 % of the budget reads 99.9 %, not 100 %."""
    from fedhft.audit._report import _percent

    assert _percent(0.9994) == "99.9%" and _percent(1.0) == "100%" and _percent(0.5) == "50%"


def test_hostile_log_text_is_escaped(
    tmp_path: Path,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """A refusal reason containing markup appears escaped, never as markup."""
    from fedhft.audit._report import render_html

    path = tmp_path / "client.jsonl"
    with AuditLog.open(path, party_id="st-mary-hospital", signing_key=client_key) as log:
        log.append(EventType.REFUSAL, {"round": 1, "reason": "<script>alert(1)</script>"})
    document, _ = build_report(path, public_key=client_key.public_key(), policy=policy)
    page = render_html(document)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_failed_verification_is_shown_with_its_findings(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """A tampered log's report says FAILED and lists each finding with its seq."""
    from fedhft.audit._report import render_html

    lines = lines_of(federation.client_log)
    lines[2] = lines[2].replace(b'"steps":20', b'"steps":2')
    write_lines(federation.client_log, lines)
    document = _build(federation, client_key, server_key, policy)
    verification = document["verification"]
    assert isinstance(verification, dict) and verification["ok"] is False
    page = render_html(document)
    assert "FAILED" in page and "signature" in page


def test_empty_log_renders(tmp_path: Path, client_key: Ed25519PrivateKey) -> None:
    """A log without spends still renders (no plot data, a notice instead)."""
    from fedhft.audit._report import render_html

    path = tmp_path / "empty.jsonl"
    with AuditLog.open(path, party_id="st-mary-hospital", signing_key=client_key) as log:
        log.append(EventType.KEY_EVENT, {"kind": "identity_loaded", "fingerprint": "a" * 64})
    document, verification = build_report(path, public_key=client_key.public_key())
    assert verification.ok
    assert "No privacy spend logged" in render_html(document)


def test_refused_rounds_are_marked_on_the_plot(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """Each refused round gets a mark on the plot's axis and a row in the refusals table."""
    from fedhft.audit._report import render_html

    with AuditLog.open(
        federation.client_log, party_id="st-mary-hospital", signing_key=client_key
    ) as log:
        log.append(EventType.REFUSAL, {"round": 7, "reason": "budget", "epsilon_would_reach": 4.3})
    document = _build(federation, client_key, server_key, policy)
    page = render_html(document)
    # One mark in the legend, one on the axis.
    assert page.count('class="refused"') == 2
    assert ">7</text>" in page and "epsilon_would_reach=4.3" in page
