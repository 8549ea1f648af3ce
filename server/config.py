"""The one table of livedmd settings: defaults, parsing, validation and the README's config section.

Precedence, lowest first: the table's default, the TOML file (`--config` or LIVEDM_CONFIG), the
environment (LIVEDM_*), command-line flags.
"""

from __future__ import annotations

import argparse
import os
import re
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


def _parse_walk_threads(text: str) -> int:
    if text.strip() == "auto":
        return min(16, 4 * (os.cpu_count() or 1))
    return _parse_positive_int(text)


def _parse_non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str) -> float:
    """`30s`, `10m`, `12h`, `7d` (or `250ms`; a bare number is seconds) → seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError("a duration like 30s, 10m, 12h or 7d")
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2) or "s"]


def _parse_positive_duration(text: str) -> float:
    seconds = parse_duration_s(text)
    if seconds <= 0:
        raise ValueError("must be longer than 0 (a duration like 30s, 10m, 12h or 7d)")
    return seconds


def _parse_interval(text: str) -> float:
    """A duration; 0 turns the schedule off."""
    return parse_duration_s(text)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("true or false")


def _parse_optional_path(text: str) -> str:
    return _parse_path(text) if text else ""


def _parse_log_format(text: str) -> str:
    if text not in ("plain", "json"):
        raise ValueError("plain or json")
    return text


def _parse_path_list(text: str) -> tuple[str, ...]:
    """Absolute directories separated by ':' (a TOML list works too); empty means unrestricted."""
    paths = [p.strip() for p in text.split(os.pathsep) if p.strip()]
    for path in paths:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} is not an absolute path")
    return tuple(os.path.normpath(p) for p in paths)


_INSTANCE_LABEL = re.compile(r"[a-z][a-z0-9]{0,15}")


def parse_discover_roots(text: str) -> tuple[tuple[str, str], ...]:
    """`[label=]/path` entries separated by ':' → ((label, path), ...); label "" for an unlabelled root.
    A label namespaces the uids of the cryoSPARC instance whose projects lie under that root."""
    roots: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(os.pathsep))):
        label, sep, path = item.rpartition("=")
        if sep and not _INSTANCE_LABEL.fullmatch(label):
            raise ValueError(f"{label!r}: an instance label is a lower-case letter, then up to 15 letters or digits")
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} is not an absolute path")
        roots.append((label, os.path.normpath(path)))
    paths = [path for _, path in roots]
    if len(set(paths)) != len(paths):
        raise ValueError("a directory is listed twice")
    return tuple(roots)


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
    aliases: tuple[str, ...] = ()  # other environment names read too (cryoSPARC's), after LIVEDM_*

    @property
    def env(self) -> str:
        return "LIVEDM_" + self.name.upper()

    @property
    def is_switch(self) -> bool:
        return self.parse is _parse_bool

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
    Setting("embedded_max_restarts", "5", "How often livedmd restarts an embedded store that died before it gives "
            "up and exits (systemd then restarts the unit).", _parse_non_negative_int),
    Setting("layout", "import_movies=raw,motioncorrected=micrographs,thumbnails=thumbnails,extract=particles",
            "Session directory layout: top-level dir=datatype pairs; everything else is metadata.",
            parse_layout),
    Setting("max_request_bytes", "8388608", "Largest JSON-RPC request body accepted.", _parse_positive_int),
    Setting("max_batch_calls", "100", "Most calls in one JSON-RPC batch; a larger batch is refused whole.",
            _parse_positive_int),
    Setting("max_connections", "512", "Most HTTP connections served at once; at the cap a new one pushes out an "
            "idle or the slowest arriving one, else it is closed at once (keep LimitNOFILE in the unit well above "
            "it).", _parse_positive_int),
    Setting("keepalive_timeout_s", "15s", "An idle keep-alive connection is closed after this long.",
            _parse_positive_duration),
    Setting("request_timeout_s", "30s", "A client must send a request's headers and body within this long, and "
            "take some of a reply within this long whenever livedmd's send buffer is full; slower clients are cut "
            "off.", _parse_positive_duration),
    Setting("max_restore_bytes", "4294967296", "Largest backup POST /admin/restore accepts. The upload is kept in "
            "the state dir while it is checked, so the state dir needs that much free space.", _parse_positive_int),
    Setting("auth_cache_s", "2s", "How long a checked token is trusted before the database is asked again.",
            _parse_positive_duration),
    Setting("session_cache_s", "1s", "How long a session read for get_datatype_size may answer later calls: this "
            "livedmd's own writes end it at once, another livedmd's show within this long. 0: every call reads.",
            _parse_interval),
    Setting("log_level", "info", "debug, info, warning or error.", _parse_log_level),
    Setting("log_format", "plain", "plain (for a terminal) or json (one object per line, for a log shipper).",
            _parse_log_format),
    Setting("data_roots", "", "The directories livedm may manage, separated by ':'. Projects outside are refused "
            "and deletion checks again. livedmd refuses to start without them unless `trial` is set.",
            _parse_path_list),
    Setting("discover_roots", "", "Where discovery looks for cryoSPARC project directories (those holding "
            "project.json), separated by ':'. An entry `label=/path` namespaces the uids of that root's projects "
            "(`label-P12`) when two cryoSPARC instances share the storage. Empty: the data roots.",
            parse_discover_roots),
    Setting("discover_depth", "3", "How deep below a discovery root a project directory may sit (0: the root "
            "itself).", _parse_non_negative_int),
    Setting("discover_interval", "10m", "How often discovery runs (30s, 10m, 12h, 7d); 0: only when asked "
            "(`livedm discover`).", _parse_interval),
    Setting("refresh_interval", "30m", "How often running and paused sessions are measured again; completed ones "
            "only when asked or when their directory changed. 0: only when asked.", _parse_interval),
    Setting("full_refresh_every", "12", "Every Nth scheduled refresh of a session walks it in full, stat'ing every "
            "file; the others re-read only directories that changed. A full one also catches files rewritten in "
            "place and raw movies changed behind their links. 1: always full; 0: full only when asked.",
            _parse_non_negative_int),
    Setting("walk_cache_entries", "1000000", "Files of recent walks kept in memory (about 50 bytes each), so that "
            "refreshing a changed directory of a running session need not read what it held back from the "
            "database. 0: none kept.", _parse_non_negative_int),
    Setting("change_feed", "true", "Follow walked directories through the kernel (inotify) so that a refresh after "
            "files were added looks at just those instead of listing each changed directory. Only on local file "
            "systems (ext4, xfs, btrfs, zfs, tmpfs, f2fs): on NFS, Lustre or GPFS another node's changes would go "
            "unseen, and directories there are always listed. Needs one inotify watch per directory "
            "(fs.inotify.max_user_watches); beyond that, the least recently walked directories give theirs up "
            "and are listed when they change.", _parse_bool),
    Setting("walk_threads", "auto", "Threads that walk and stat a session's files; more keep a cold disk or a "
            "network file system busy. Refreshes that run at once take turns on them (a small session is not "
            "queued behind all of a large one). auto: four per core, at most 16.", _parse_walk_threads),
    Setting("trial", "false", "Allow running without data_roots (a trial on a laptop: projects may then be "
            "anywhere but system and state dirs). Never on a shared server.", _parse_bool),
    Setting("disk_threads", "4", "Threads for disk work (walking, sizing) requested by API calls; other calls and "
            "job heartbeats never wait behind them.", _parse_positive_int),
    Setting("state_min_free_bytes", "1073741824", "/healthz fails when the state dir's file system has less free "
            "space than this.", _parse_non_negative_int),
    Setting("workers", "2", "Background jobs (deletions, hooks, size refreshes) run at once by this process; "
            "0 runs none.", _parse_non_negative_int),
    Setting("worker_only", "false", "Run jobs only, without the HTTP server (more workers for a shared "
            "database).", _parse_bool),
    Setting("job_lease_s", "30s", "How long a claimed job stays claimed without a heartbeat; after that "
            "another worker may take it over (after a crash).", _parse_positive_duration),
    Setting("job_max_attempts", "5", "Attempts of a job whose failures may pass before it is failed.",
            _parse_positive_int),
    Setting("drain_s", "20s", "On SIGTERM: how long running jobs may take to finish before they are "
            "released for another worker.", _parse_positive_duration),
    Setting("hook_enable", "false", "Run the state-change hook script (cryoSPARC's name works too).",
            _parse_bool, ("CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_ENABLE",)),
    Setting("hook_path", "", "Absolute path of the hook script, run as `script project_uid session_uid "
            "datatype status`.", _parse_optional_path, ("CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH",)),
    Setting("hook_timeout_s", "1h", "A hook run longer than this is killed (with every process of its session).",
            _parse_positive_duration),
    Setting("hook_log_dir", "", "Where hook logs go, one file per run named by its job "
            "(`<project>_<session>_<datatype>_<job>.log`). Default: <state_dir>/hook-logs.", _parse_optional_path),
    Setting("hook_log_max_bytes", "10485760", "Most bytes of a hook run's output kept in its log (the head and "
            "the tail; the middle is cut with a note).", _parse_positive_int),
    Setting("hook_log_keep_s", "90d", "How long a hook run's log is kept after its last write (30s, 10m, 12h, 7d); "
            "older ones are removed. 0: kept for ever.", _parse_interval),
    Setting("hook_allowed_scripts", "", "Scripts, separated by ':', that an admin may run instead of hook_path "
            "through trigger_live_data_management_script(script_location=...). Empty: only hook_path.",
            _parse_path_list),
    Setting("url", "", "The URL hook scripts use to call back. Default: http://<bind>:<port> "
            "(127.0.0.1 when bound to all addresses)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    bind: str
    port: int
    state_dir: str
    mongo_uri: str
    mongo_db: str
    embedded_max_restarts: int
    layout: tuple[tuple[str, str], ...]
    max_request_bytes: int
    max_batch_calls: int
    max_restore_bytes: int
    max_connections: int
    keepalive_timeout_s: float
    request_timeout_s: float
    auth_cache_s: float
    session_cache_s: float
    log_level: str
    log_format: str
    data_roots: tuple[str, ...]
    discover_roots: tuple[tuple[str, str], ...]
    discover_depth: int
    discover_interval: float
    refresh_interval: float
    full_refresh_every: int
    walk_cache_entries: int
    change_feed: bool
    walk_threads: int
    trial: bool
    disk_threads: int
    state_min_free_bytes: int
    workers: int
    worker_only: bool
    job_lease_s: float
    job_max_attempts: int
    drain_s: float
    hook_enable: bool
    hook_path: str
    hook_timeout_s: float
    hook_log_dir: str
    hook_log_max_bytes: int
    hook_log_keep_s: float
    hook_allowed_scripts: tuple[str, ...]
    url: str

    @property
    def discovery_roots(self) -> tuple[tuple[str, str], ...]:
        """(label, path) of each root discovery searches: discover_roots, else the data roots unlabelled."""
        return self.discover_roots or tuple(("", root) for root in self.data_roots)

    @property
    def admin_token_path(self) -> Path:
        return Path(self.state_dir) / "admin.token"

    @property
    def hook_logs(self) -> Path:
        return Path(self.hook_log_dir) if self.hook_log_dir else Path(self.state_dir) / "hook-logs"

    @property
    def callback_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


def _convert(setting: Setting, raw: Any, origin: str) -> Any:
    if (isinstance(raw, list) and setting.parse in (_parse_path_list, parse_discover_roots)
            and all(isinstance(p, str) for p in raw)):
        raw = os.pathsep.join(raw)
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
        for env in (*reversed(setting.aliases), setting.env):
            if env in environ:
                raw, origin = environ[env], f"environment {env}"
        if flags.get(setting.name) is not None:
            raw, origin = flags[setting.name], f"flag {setting.flag}"
        if isinstance(raw, bool) and setting.is_switch:
            raw = "true" if raw else "false"
        values[setting.name] = raw if raw == "" and setting.parse is str else _convert(setting, raw, origin)
    return Config(**values)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (env LIVEDM_CONFIG)")
    for setting in SETTINGS:
        envs = " or ".join((setting.env, *setting.aliases))
        if setting.is_switch:
            parser.add_argument(setting.flag, dest=setting.name, action="store_const", const="true",
                                help=f"{setting.help} (env {envs})")
        else:
            parser.add_argument(setting.flag, dest=setting.name, metavar=setting.name.upper(),
                                help=f"{setting.help} (env {envs})")


def markdown_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's configuration section, generated from the table (a test keeps them equal)."""
    lines = ["| setting (TOML key) | environment | flag | default | meaning |", "|---|---|---|---|---|"]
    for s in settings:
        default = f"`{s.default}`" if s.default else "(empty)"
        envs = "<br>".join(f"`{env}`" for env in (s.env, *s.aliases))
        lines.append(f"| `{s.name}` | {envs} | `{s.flag}` | {default} | {s.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
