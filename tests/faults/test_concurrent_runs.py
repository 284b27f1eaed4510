"""Fault 6: two live runs on the same target at once, as two CLI processes with --yes.

One applies; the other waits for the target's slot (then finds nothing left to do) or
is refused by the database lock or drift check. Never both, never a mix: the tables
are in the fully-applied state and the structure was deleted exactly once.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli import finish, start_cli
from tests.faults.conftest import States, site_states
from tests.pg import audit_rows


def test_two_purges_and_two_resets_at_once_apply_each_change_once(
    medusa_url: str, cms: tuple[str, dict[str, str]], exports: Path, media_states: States
) -> None:
    url, sites = cms
    site = site_states(url, sites["atelier"])
    purges = [start_cli("media", "purge", "--live", "--yes") for _ in range(2)]
    resets = [start_cli("site", "reset", sites["atelier"], "--live", "--yes") for _ in range(2)]
    purge_runs = [finish(p) for p in purges]
    reset_runs = [finish(p) for p in resets]

    # Media: exactly one run deleted anything; the other found nothing (it waited) or
    # was refused (exit 3), and the catalog is fully purged, once.
    applied = [out for code, out, _ in purge_runs if code == 0 and "Applied: images=" in out]
    others = [
        (code, out, err)
        for code, out, err in purge_runs
        if not (code == 0 and "Applied: images=" in out)
    ]
    assert len(applied) == 1 and len(others) == 1, purge_runs
    code, out, err = others[0]
    assert (code == 0 and "Nothing to purge" in out) or code == 3, (code, out, err)
    assert media_states.now() == "applied"
    assert len(audit_rows(medusa_url, "purge-product-media")) == 1

    # Site: one reset deleted the structure; the other deleted nothing (it waited, then
    # planned an empty reset) or was refused; the tables hold the applied state.
    deleted = [out for code, out, _ in reset_runs if code == 0 and "categories=4" in out]
    assert len(deleted) == 1, reset_runs
    for code, out, err in reset_runs:
        assert code in (0, 3), (code, out, err)
    assert site.now() == "applied"
    audits = audit_rows(url, "reset-site-structure")
    deleted_counts = [r[3]["deleted"]["categories"] for r in audits]  # type: ignore[index]
    assert sorted(deleted_counts)[-1] == 4 and sum(deleted_counts) == 4, audits
