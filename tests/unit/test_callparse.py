import pytest

from livedm.client.callparse import MAX_CALL_CHARS, CallSyntaxError, parse_call


def test_keyword_call_as_the_seed_writes_it() -> None:
    text = "get_datatype_size(project_uid = 'P45', session_uid = 'S1', datatype = 'micrographs')"
    assert parse_call(text) == ("get_datatype_size",
                                {"project_uid": "P45", "session_uid": "S1", "datatype": "micrographs"})


def test_positional_literals_of_every_kind() -> None:
    method, params = parse_call("f('a', 1, 2.5, True, None, [1, 'x'], {'k': [None]}, -3)")
    assert method == "f"
    assert params == ["a", 1, 2.5, True, None, [1, "x"], {"k": [None]}, -3]


def test_no_arguments_gives_an_empty_list() -> None:
    assert parse_call("  list_projects()  ") == ("list_projects", [])


@pytest.mark.parametrize("text, words", [
    ("f(a=1, a=2)", "repeated"),
    ("f('P1', session_uid='S1')", "not both"),
    ("f(__import__('os').system('true'))", "not a literal"),
    ("f(x=open('/etc/passwd'))", "not a literal"),
    ("os.system('true')", "plain name"),
    ("f(*['a'])", "*arguments"),
    ("f(**{'a': 1})", "**arguments"),
    ("f", "not a call"),
    ("f(1) + g(2)", "not a call"),
    ("f(1); g(2)", "not a Python call"),
    ("f(", "not a Python call"),
    ("f(lambda: 1)", "not a literal"),
    ("f(a=[x for x in 'ab'])", "not a literal"),
    ("", "not a Python call"),
])
def test_what_is_not_a_safe_call_is_refused(text: str, words: str) -> None:
    with pytest.raises(CallSyntaxError, match=words.replace("*", r"\*").replace("(", r"\(")):
        parse_call(text)


def test_over_long_input_is_refused_before_parsing() -> None:
    with pytest.raises(CallSyntaxError, match="longer than"):
        parse_call("f('" + "a" * MAX_CALL_CHARS + "')")
