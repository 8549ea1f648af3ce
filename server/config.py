"""The one table of livedmd settings: defaults, parsing, validation and the README's config section.

Precedence, lowest first: the table's default, the TOML file (`--config` or LIVEDM_CONFIG), the
environment (LIVEDM_*), command-line flags.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .domain import DATATYPES


class ConfigError(Exception):
    """A setting has a bad value; the message names the setting and where it came from."""


def _parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("a port is 0-65535")
    return port


def _parse_positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _parse_positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _parse_path(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return str(Path(text).expanduser().absolute())


def _parse_log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("one of debug, info, warning, error")
    return level


def parse_layout(text: str) -> tuple[tuple[str, str], ...]:
    """`dir=datatype,dir=datatype` → ((dir, datatype), ...). Anything else under a session is metadata."""
    rules: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        directory, sep, datatype = item.partition("=")
        directory, datatype = directory.strip().strip("/"), datatype.strip()
        if not sep or not directory or datatype not in DATATYPES:
            raise ValueError(f"{item!r} is not dir=datatype with datatype one of {', '.join(DATATYPES)}")
        if directory.startswith(".") or "/" in directory:
            raise ValueError(f"{directory!r}: a layout directory is one plain name inside the session")
        rules.append((directory, datatype))
    return tuple(rules)


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return "LIVEDM_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _default_state_dir(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "livedm")


SETTINGS: tuple[Setting, ...] = (
    Setting("bind", "127.0.0.1", "Address the HTTP server listens on."),
    Setting("port", "39070", "TCP port of the HTTP server (0 picks a free one).", _parse_port),
    Setting("state_dir", "", "Directory for livedm's own state: admin token, embedded database, logs. "
            "Default: $XDG_STATE_HOME/livedm or ~/.local/state/livedm.", _parse_path),
    Setting("mongo_uri", "", "MongoDB URI (replica sets included). Empty: start the embedded store "
            "in the state dir."),
    Setting("mongo_db", "livedm", "Database name inside MongoDB."),
    Setting("embedded_port", "0", "Loopback port of the embedded store (0 picks a free one).", _parse_port),
    Setting("layout", "import_movies=raw,motioncorrected=micrographs,thumbnails=thumbnails,extract=particles",
            "Session directory layout: top-level dir=datatype pairs; everything else is metadata.",
            parse_layout),
    Setting("max_request_bytes", "8388608", "Largest JSON-RPC request body accepted.", _parse_positive_int),
    Setting("auth_cache_s", "2", "How long a checked token is trusted before the database is asked again.",
            _parse_positive_float),
    Setting("log_level", "info", "debug, info, warning or error.", _parse_log_level),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    bind: str
    port: int
    state_dir: str
    mongo_uri: str
    mongo_db: str
    embedded_port: int
    layout: tuple[tuple[str, str], ...]
    max_request_bytes: int
    auth_cache_s: float
    log_level: str

    @property
    def admin_token_path(self) -> Path:
        return Path(self.state_dir) / "admin.token"


def _convert(setting: Setting, raw: Any, origin: str) -> Any:
    text = raw if isinstance(raw, str) else str(raw)
    if isinstance(raw, (bool, list, dict)):
        raise ConfigError(f"setting {setting.name!r} ({origin}): expected a string or number, got {raw!r}")
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise ConfigError(f"setting {setting.name!r} ({origin}): bad value {text!r}: {exc}") from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(_BY_NAME)}")
    return data


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         config_file: str | None = None) -> Config:
    """Build the Config from the table's defaults, a TOML file, the environment and flags."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    config_file = config_file or environ.get("LIVEDM_CONFIG") or None
    from_file = _read_toml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: Any = setting.default or (_default_state_dir(environ) if setting.name == "state_dir" else "")
        origin = "default"
        if setting.name in from_file:
            raw, origin = from_file[setting.name], f"config file {config_file}"
        if setting.env in environ:
            raw, origin = environ[setting.env], f"environment {setting.env}"
        if flags.get(setting.name) is not None:
            raw, origin = flags[setting.name], f"flag {setting.flag}"
        values[setting.name] = raw if raw == "" and setting.parse is str else _convert(setting, raw, origin)
    return Config(**values)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (env LIVEDM_CONFIG)")
    for setting in SETTINGS:
        parser.add_argument(setting.flag, dest=setting.name, metavar=setting.name.upper(),
                            help=f"{setting.help} (env {setting.env})")


def markdown_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's configuration section, generated from the table (a test keeps them equal)."""
    lines = ["| setting (TOML key) | environment | flag | default | meaning |", "|---|---|---|---|---|"]
    for s in settings:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | `{s.env}` | `{s.flag}` | {default} | {s.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
