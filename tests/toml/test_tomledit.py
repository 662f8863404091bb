"""The rules a new key or table follows, one by one, on small files (agent.toml.edit.edit_value).

Each test states a file, one edit, and the exact text a careful person would have written.
"""

from typing import Any, Sequence

import pytest

from agent.base.errors import NodeFileError
from agent.toml.edit import NotFixable, edit_value, parse_toml
from agent.toml.layout import Layout


def edit(text: str, key: str, value: Any, after: Sequence[str] = ()) -> str:
    return edit_value(text, tuple(key.split(".")), value, after=after)


# --- indentation -------------------------------------------------------------------------------------


def test_a_new_key_takes_its_siblings_indentation() -> None:
    text = "[a]\n    y = 1\n    x = 2\n[b]\nz = 3\n"
    assert edit(text, "a.w", True) == "[a]\n    y = 1\n    x = 2\n    w = true\n[b]\nz = 3\n"


def test_a_key_in_an_empty_table_gets_the_files_indentation_step() -> None:
    text = "[a]\n  x = 1\n\n  [a.b]\n\n[c]\n  y = 2\n"
    assert edit(text, "a.b.k", 1) == "[a]\n  x = 1\n\n  [a.b]\n    k = 1\n\n[c]\n  y = 2\n"


def test_a_new_table_is_indented_like_its_siblings_and_its_keys_like_the_file() -> None:
    text = "[t]\n\t[t.one]\n\t\tk = 1\n\n[u]\n\tv = 2\n"
    assert edit(text, "t.two.k", 2) == "[t]\n\t[t.one]\n\t\tk = 1\n\n\t[t.two]\n\t\tk = 2\n\n[u]\n\tv = 2\n"


def test_a_new_table_with_no_sibling_is_nested_one_file_step_below_its_parent() -> None:
    text = "[a]\n    x = 1\n\n    [a.b]\n        y = 1\n"
    assert edit(text, "a.b.c.d.k", 1) == (
        "[a]\n    x = 1\n\n    [a.b]\n        y = 1\n\n            [a.b.c.d]\n                k = 1\n")


# --- blank lines ---------------------------------------------------------------------------------------


def test_a_key_goes_before_the_tables_trailing_blank_lines_and_the_next_headers_comment() -> None:
    text = "[a]\nx = 1\n\n\n# the b table\n[b]\ny = 2\n"
    assert edit(text, "a.z", 2) == "[a]\nx = 1\nz = 2\n\n\n# the b table\n[b]\ny = 2\n"


def test_a_new_table_gets_the_files_blank_line_and_the_next_table_keeps_its_own() -> None:
    text = "[p.a]\nx = 1\n\n[q]\ny = 2\n"
    assert edit(text, "p.b.k", "v") == '[p.a]\nx = 1\n\n[p.b]\nk = "v"\n\n[q]\ny = 2\n'


def test_a_file_without_blank_lines_gets_none() -> None:
    text = "[p.a]\nx = 1\n[q]\ny = 2\n"
    assert edit(text, "p.b.k", 1) == "[p.a]\nx = 1\n[p.b]\nk = 1\n[q]\ny = 2\n"


def test_right_after_an_empty_parent_header_the_file_uses_no_blank_line() -> None:
    # nodeadm's sorted rendering: "[plugins]" directly followed by its first sub-table
    text = "[r]\nk = 1\n\n[s]\n[s.t]\nk = 2\n\n[u]\nk = 3\n\n[v]\n[v.w]\nk = 4\n"
    assert edit(text, "x.y.k", 5) == text + "\n[x.y]\nk = 5\n"
    assert edit(text, "u.z.k", 5) == text.replace("[u]\nk = 3\n", "[u]\nk = 3\n\n[u.z]\nk = 5\n")
    empty_parent = "[a]\nk = 1\n\n[s]\n[s.t]\nk = 2\n\n[b]\n"
    assert edit(empty_parent, "b.c.k", 1) == empty_parent + "[b.c]\nk = 1\n"


# --- quoting -------------------------------------------------------------------------------------------


def test_strings_take_the_files_quotes() -> None:
    single = "[a]\nx = 'one'\n[b]\ny = 2\n"
    assert edit(single, "b.z", "two") == "[a]\nx = 'one'\n[b]\ny = 2\nz = 'two'\n"
    assert edit(single, "b.z", "it's") == "[a]\nx = 'one'\n[b]\ny = 2\nz = \"it's\"\n"  # no literal form
    double = "[a]\nx = \"one\"\n[b]\ny = 2\n"
    assert edit(double, "b.z", "two") == '[a]\nx = "one"\n[b]\ny = 2\nz = "two"\n'


def test_the_tables_own_quotes_come_before_the_files() -> None:
    text = "[a]\nx = 'one'\ny = 'two'\n[b]\nz = \"three\"\n"
    assert edit(text, "b.w", "four") == "[a]\nx = 'one'\ny = 'two'\n[b]\nz = \"three\"\nw = \"four\"\n"


def test_a_replaced_string_keeps_its_quotes_and_comment() -> None:
    assert edit("[a]\nx = 'old'  # why\n", "a.x", "new") == "[a]\nx = 'new'  # why\n"


def test_new_header_keys_are_spelled_like_the_files_headers() -> None:
    text = "[plugins.'io.containerd.cri.v1.runtime'.containerd]\nk = 1\n"
    key = ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "nvidia", "runtime_type")
    assert edit_value(text, key, "x") == (
        text + "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]\nruntime_type = \"x\"\n")
    quoted = ("plugins", "a.b", "k")
    assert edit_value("[x.'y.z']\nk = 1\n", quoted, 1) == "[x.'y.z']\nk = 1\n\n[plugins.'a.b']\nk = 1\n"


# --- order and place -----------------------------------------------------------------------------------


def test_a_new_key_follows_its_related_sibling() -> None:
    text = "[o]\nBinaryName = 'x'\nRoot = ''\nA = 1\n"
    assert edit(text, "o.SystemdCgroup", True, after=["BinaryName"]) == (
        "[o]\nBinaryName = 'x'\nSystemdCgroup = true\nRoot = ''\nA = 1\n")
    assert edit(text, "o.SystemdCgroup", True) == text + "SystemdCgroup = true\n"  # else: the table's end


def test_a_sorted_table_stays_sorted() -> None:
    text = "[o]\nBinaryName = 'x'\n# where to find it\nRoot = ''\nZ = 1\n"
    assert edit(text, "o.SystemdCgroup", True, after=["BinaryName"]) == (
        "[o]\nBinaryName = 'x'\n# where to find it\nRoot = ''\nSystemdCgroup = true\nZ = 1\n")
    assert edit(text, "o.Debug", True) == "[o]\nBinaryName = 'x'\nDebug = true\n# where to find it\nRoot = ''\nZ = 1\n"


def test_a_new_sub_table_goes_after_its_parents_sub_tables_wherever_they_are() -> None:
    text = ("[r.runc]\nt = 1\n\n[r.runc.options]\nb = 1\n\n[other]\nk = 1\n\n[r.crun]\nt = 1\n\n[last]\nk = 1\n")
    assert edit(text, "r.nvidia.t", 2) == text.replace("[r.crun]\nt = 1\n", "[r.crun]\nt = 1\n\n[r.nvidia]\nt = 2\n")


def test_a_new_table_whose_sub_tables_exist_goes_right_above_them() -> None:
    text = "version = 2\n\n# the nvidia options\n[r.nvidia.options]\nb = 1\n"
    assert edit(text, "r.nvidia.t", 1) == (
        "version = 2\n\n[r.nvidia]\nt = 1\n\n# the nvidia options\n[r.nvidia.options]\nb = 1\n")


def test_a_key_of_the_table_comes_before_its_sub_tables() -> None:
    text = "[a]\nx = 1\n[a.b]\ny = 2\n"
    assert edit(text, "a.z", 3) == "[a]\nx = 1\nz = 3\n[a.b]\ny = 2\n"


def test_dotted_keys_get_a_dotted_key_next_to_their_siblings() -> None:
    text = "[n]\nt = 1\noptions.BinaryName = 'x'\nz = 2\n"
    assert edit(text, "n.options.SystemdCgroup", True, after=["BinaryName"]) == (
        "[n]\nt = 1\noptions.BinaryName = 'x'\noptions.SystemdCgroup = true\nz = 2\n")


def test_a_key_goes_after_a_multi_line_value_not_into_it() -> None:
    text = '[a]\nx = [\n  "[not.a.header]",  # ]\n  """\n[nor]\n""",\n]\n[b]\n'
    assert edit(text, "a.y", 1) == text.replace("]\n[b]", "]\ny = 1\n[b]")


def test_an_inline_table_is_edited_inside_its_line() -> None:
    text = "[n]\noptions = { BinaryName = 'x' }\n"
    assert edit(text, "n.options.SystemdCgroup", True) == "[n]\noptions = { BinaryName = 'x', SystemdCgroup = true }\n"


def test_the_first_table_of_a_file_goes_at_its_end() -> None:
    assert edit("version = 2\n", "a.b.k", 1) == "version = 2\n\n[a.b]\nk = 1\n"
    assert edit("", "a.k", 1) == "[a]\nk = 1\n"


# --- line endings --------------------------------------------------------------------------------------


def test_crlf_stays_crlf() -> None:
    text = "[a]\r\nx = 1\r\n\r\n[b]\r\ny = 2\r\n"
    assert edit(text, "a.z", 2) == "[a]\r\nx = 1\r\nz = 2\r\n\r\n[b]\r\ny = 2\r\n"
    assert edit(text, "a.c.k", 3) == "[a]\r\nx = 1\r\n\r\n[a.c]\r\nk = 3\r\n\r\n[b]\r\ny = 2\r\n"


def test_a_file_without_a_final_newline_keeps_it_that_way() -> None:
    assert edit("[a]\nx = 1", "a.y", 2) == "[a]\nx = 1\ny = 2"
    assert edit("[a]\nx = 1", "b.y", 2) == "[a]\nx = 1\n\n[b]\ny = 2"


# --- what is refused --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, message", [
    ("a = 1\n", "a.b", "a is not a table"),
    ("[[a]]\nx = 1\n", "a.y", "a is not a table"),
    ("[a.b]\nx = 1\n", "a.b", "a.b is a table, expected a value"),
])
def test_a_structure_in_the_way_is_refused(text: str, key: str, message: str) -> None:
    with pytest.raises(NotFixable, match=message):
        edit(text, key, 1)


def test_the_layout_reader_is_not_fooled_by_strings() -> None:
    layout = Layout("a = '[x]'\nb = \"\"\"\n[y]\n\"\"\"\n[t . 'u.v' . \"w\"]  # c\nk = 1 # [z]\n")
    assert [h.path for h in layout.headers] == [("t", "u.v", "w")]
    assert [(k.key, k.line, k.end) for k in layout.keys] == [(("a",), 0, 0), (("b",), 1, 3), (("k",), 5, 5)]
    assert layout.kinds == ["key", "key", "value", "value", "header", "key"]


def test_where_tomlkit_cannot_read_the_rules_place_the_nearest_readable_place_is_taken() -> None:
    # valid TOML; the rules place [p] above [p.cni], which tomlkit 0.15.2 rejects here ("Key containerd
    # already exists"), so the nearest place it reads is taken (above [p.containerd]); tomlkit 0.15.3
    # reads the rules place. Either way: only the two new lines, and the values are the old ones plus this.
    text = ("version = 2\n[p.cni]\nb = 1\n[p.containerd.runtimes.nvidia.options]\nB = 1\n"
            "[p.containerd]\n[grpc]\na = 1\n[p.containerd.runtimes.nvidia]\n")
    rules_place = text.replace("[p.cni]\n", "[p]\nenable_cdi = true\n[p.cni]\n")
    nearest_readable = text.replace("[p.containerd]\n", "[p]\nenable_cdi = true\n[p.containerd]\n")
    new = edit(text, "p.enable_cdi", True)
    try:
        parse_toml(rules_place, "<rules place>")
    except NodeFileError:  # the rules place is taken whenever the parser can read it
        assert new == nearest_readable
    else:
        assert new == rules_place
    expected = parse_toml(text, "<old>").unwrap()
    expected["p"]["enable_cdi"] = True
    assert parse_toml(new, "<new>").unwrap() == expected
