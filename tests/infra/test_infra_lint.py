"""cfn-lint over the synthesized templates: no error, no warning."""

from __future__ import annotations

import json

from cfnlint.api import lint


def test_cfn_lint_is_clean(any_synth):
    matches = lint(json.dumps(any_synth.template), regions=["us-east-1"])
    assert [str(m) for m in matches] == []
