from __future__ import annotations

from pathlib import Path

import pytest
from moecast.agent.settings_reference import BEGIN, END, field_comments, reference, replace_block
from pydantic import BaseModel

README = Path(__file__).resolve().parents[2] / "README.md"


class _Example(BaseModel):
    plain: int = 1
    trailing: float = 2.0  # said beside the field
    # said above the field,
    # over two lines
    above: str = "x"


def test_comments_come_from_beside_or_above_each_field() -> None:
    assert field_comments(_Example) == {
        "plain": "",
        "trailing": "said beside the field",
        "above": "said above the field, over two lines",
    }


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    table = reference()
    assert "| `broker.tls.ca_file` | `MOECAST_BROKER__TLS__CA_FILE` |" in table
    assert "| `streams[].alerts[].probability` |  |" in table
    assert "| `trust_dev_key` | `MOECAST_TRUST_DEV_KEY` | bool | false |" in table


def test_the_readme_carries_the_current_reference() -> None:
    text = README.read_text()
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert block == reference(), (
        "run: python -m moecast.agent.settings_reference --readme README.md"
    )


def test_replacing_needs_both_markers() -> None:
    assert replace_block(f"a\n{BEGIN}\nold\n{END}\nb", "new") == f"a\n{BEGIN}\nnew\n{END}\nb"
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "new")
