"""envmatrix.yamlsrc: the one module that reads and writes YAML (matrix files, resolved plans;
test_layout checks that it is the only one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from envmatrix import yamlsrc
from envmatrix.errors import ConfigError
from envmatrix.rundir.layout import atomic_write_text


def test_lines_of_keys_and_values(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nbases:\n  bookworm:\n    image: debian:bookworm\n"
                    "list:\n  - a\n  - 1.20\n")
    doc = yamlsrc.read_with_lines(path)
    assert doc.data == {"version": "1", "bases": {"bookworm": {"image": "debian:bookworm"}},
                        "list": ["a", "1.20"]}  # scalars stay the text as written
    assert doc.line(("bases", "bookworm", "image")) == 4
    assert doc.line(("list", 1)) == 7
    # An unknown path falls back to its nearest known parent, whose value starts on line 4.
    assert doc.line(("bases", "bookworm", "nothing", "here")) == 4
    assert doc.line(("bases", "bookworm"), at_key=True) == 3


def test_control_character_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text('version: 1\nbases:\n  a: {image: "deb\x07ian"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        yamlsrc.read_with_lines(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3:18: character #x0007 is not allowed"), message
    assert "Fix: delete it" in message


def test_plain_round_trip_keeps_order_and_text(tmp_path: Path) -> None:
    data = {"schema": "x/1", "b": [1, 2.5, None, True], "a": {"ü": "1.20"}}
    target = tmp_path / "sub" / "plan.yaml"
    atomic_write_text(target, yamlsrc.dump_plain(data))
    back = yamlsrc.read_plain(target)
    assert back == data and list(back) == ["schema", "b", "a"]
    assert not [p for p in target.parent.iterdir() if p.name != "plan.yaml"]  # no temp files


def test_broken_plain_yaml_is_a_yaml_error(tmp_path: Path) -> None:
    target = tmp_path / "plan.yaml"
    target.write_text("a: [1, 2\n")
    with pytest.raises(yamlsrc.YamlError, match="expected ',' or ']'"):
        yamlsrc.read_plain(target)
