"""Issue 9's chaos suite: every scenario against a real hub, proxy and single-user servers, the
emulator injecting the faults; each row must read ``0 0 0 yes 0`` (see docs/RELIABILITY.md).

The whole run happens once (module fixture); each scenario's row is its own test.
"""

from __future__ import annotations

import pytest
from chaos_lab import Row, format_table, run, scenarios

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict[str, Row]:
    rows, seconds = run(tmp_path_factory.mktemp("chaos"))
    print(f"\n{format_table(rows)}\n({seconds:.0f} s)")
    return {row.scenario: row for row in rows}


@pytest.mark.parametrize("scenario", [s.name for s in scenarios()])
def test_nothing_is_lost(table, scenario):
    row = table[scenario]
    assert row.cells()[1:] == ["0", "0", "0", "yes", "0"], "\n".join(row.notes)
