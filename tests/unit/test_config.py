from pathlib import Path

import pytest

from livedm.server.config import SETTINGS, ConfigError, load, markdown_table, parse_duration_s

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults(tmp_path: Path) -> None:
    config = load({}, environ={"XDG_STATE_HOME": str(tmp_path)})
    assert (config.bind, config.port, config.mongo_uri, config.mongo_db) == ("127.0.0.1", 39070, "", "livedm")
    assert config.state_dir == str(tmp_path / "livedm")
    assert ("import_movies", "raw") in config.layout


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "livedm.toml"
    toml.write_text('port = 1111\nbind = "0.0.0.0"\nmongo_db = "fromfile"\n')
    config = load({"port": "3333"}, environ={"LIVEDM_PORT": "2222", "LIVEDM_BIND": "::1"}, config_file=str(toml))
    assert (config.port, config.bind, config.mongo_db) == (3333, "::1", "fromfile")
    assert load({}, environ={"LIVEDM_CONFIG": str(toml)}).port == 1111


@pytest.mark.parametrize("flags, environ, words", [
    ({"port": "http"}, {}, "setting 'port' (flag --port): bad value 'http'"),
    ({}, {"LIVEDM_PORT": "70000"}, "setting 'port' (environment LIVEDM_PORT)"),
    ({}, {"LIVEDM_LAYOUT": "import_movies=movies"}, "setting 'layout'"),
    ({}, {"LIVEDM_LAYOUT": "../x=raw"}, "setting 'layout'"),
    ({"max_request_bytes": "-5"}, {}, "max_request_bytes"),
    ({"log_level": "loud"}, {}, "log_level"),
])
def test_bad_values_name_the_setting_and_its_origin(flags: dict, environ: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags, environ=environ)
    assert words in str(info.value)


def test_bad_config_files(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*prot"):
        load({}, environ={}, config_file=str(unknown))
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, environ={}, config_file=str(broken))
    with pytest.raises(ConfigError, match="No such file"):
        load({}, environ={}, config_file=str(tmp_path / "absent.toml"))
    typed = tmp_path / "typed.toml"
    typed.write_text("port = true\n")
    with pytest.raises(ConfigError, match="'port'"):
        load({}, environ={}, config_file=str(typed))


def test_every_setting_has_the_env_and_flag_names_spec_requires() -> None:
    names = {s.name: (s.env, s.flag) for s in SETTINGS}
    assert names["bind"] == ("LIVEDM_BIND", "--bind")
    assert names["port"] == ("LIVEDM_PORT", "--port")
    assert names["state_dir"] == ("LIVEDM_STATE_DIR", "--state-dir")
    assert names["mongo_uri"] == ("LIVEDM_MONGO_URI", "--mongo-uri")


def test_readme_configuration_section_is_the_generated_table() -> None:
    text = README.read_text()
    start = text.index("<!-- settings:start -->") + len("<!-- settings:start -->")
    end = text.index("<!-- settings:end -->")
    assert text[start:end].strip() == markdown_table(), "run: python -m livedm.server.config, paste into README"


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("10m", 600.0), ("12h", 43200.0), ("7d", 604800.0),
                                               ("250ms", 0.25), ("1.5h", 5400.0), ("45", 45.0), (" 2 m ", 120.0)])
def test_durations_are_written_with_their_unit(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "10 minutes", "-5s", "5w", "1e3s", "s"])
def test_a_bad_duration_names_the_setting_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"drain_s": text}, environ={})
    assert "drain_s" in str(info.value) and "30s, 10m, 12h or 7d" in str(info.value)


def test_zero_turns_a_schedule_off_but_not_a_timeout() -> None:
    assert load({"discover_interval": "0", "refresh_interval": "0s"}, environ={}).discover_interval == 0.0
    with pytest.raises(ConfigError):
        load({"hook_timeout_s": "0s"}, environ={})


def test_discover_roots_take_an_optional_instance_label() -> None:
    config = load({"discover_roots": "/data/a:krios=/data/b", "data_roots": "/data"}, environ={})
    assert config.discovery_roots == (("", "/data/a"), ("krios", "/data/b"))
    assert load({"data_roots": "/data:/scratch"}, environ={}).discovery_roots == (("", "/data"), ("", "/scratch"))
    for bad in ("Krios=/data/b", "k-1=/data/b", "relative/dir", "/data/a:/data/a"):
        with pytest.raises(ConfigError):
            load({"discover_roots": bad}, environ={})
