"""``aweber-job tap`` (also ``tap-aweber``): the job as a Singer tap, as Meltano and other orchestrators run one.

``--about`` says what the tap is; ``--config FILE --discover`` prints the catalog; ``--config FILE [--state
FILE] [--catalog FILE]`` is one run of the job whose output is Singer messages on stdout (job/run/singer.py).
The config is a JSON object of the job's own settings, named as its variables lower-cased without
``AWEBER_`` (``client_id``, ``token_file``…), plus Singer's ``start_date``; the real environment and any
``.env`` file play no part. Bad input is one line and an exit code before anything is sent: a config that is
not right 78, a state that is not 65, a catalog that is not 64. docs/singer.md has the details.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from job import __version__
from job.config import VARIABLES, Settings, load_settings
from job.errors import EXIT_OK, ConfigError, JobError, TokenFileError, UsageError

TAP_NAME = "tap-aweber"
CAPABILITIES = ("catalog", "discover", "state", "about")

# The job's settings the tap does not take: the task is the streams', and monitoring and fleet runs are run's.
_NOT_TAP_SETTINGS = {"task", "ping_url", "metrics_file", "pushgateway_url", "run_interval", "log_format"}
_SECRET_SETTINGS = {"client_secret", "store", "store_key"}
_SETTINGS: dict[str, str] = {
    name[len("AWEBER_"):].lower(): meaning for name, meaning in VARIABLES.items()
    if name[len("AWEBER_"):].lower() not in _NOT_TAP_SETTINGS
}
_SETTINGS["start_date"] = ("RFC 3339 date and time a first run (a list without a bookmark) reports from "
                           "(default: 24 hours ago)")
_INTEGER_SETTINGS = {"account_id", "rate_limit"}
_NUMBER_SETTINGS = {"lock_timeout", "http_timeout", "retry_deadline", "refresh_leeway", "shutdown_grace"}
_LIST_SETTINGS = {"list_ids", "store_key"}


def singer_streams() -> dict[str, Any]:
    """The streams (job/tasks/streams.py, the same that ``run --task`` reports) as the run layer takes them."""
    from job.run.singer import SingerStream
    from job.tasks.streams import STREAMS

    return {name: SingerStream(name, stream.task, stream.schema, stream.key_properties, stream.replication_key)
            for name, stream in STREAMS.items()}


def run_tap_command(args: argparse.Namespace, out: IO[str]) -> int:
    """The tap: --about, --discover, or one run whose output is Singer messages."""
    if args.about:
        out.write(about_text(args.about_format or "text"))
        out.flush()
        return EXIT_OK
    if args.about_format is not None:
        raise UsageError("tap: --format goes with --about")
    if not args.config:
        raise UsageError("tap needs --config FILE: a JSON object of settings (see: aweber-job tap --about)")
    settings, start_date = read_config(Path(args.config))
    streams = singer_streams()
    if args.discover:
        out.write(json.dumps(catalog(streams), indent=2) + "\n")
        out.flush()
        return EXIT_OK
    from job.run.singer import check_state

    selected = select(streams, _read_json(args.catalog, "catalog", UsageError) if args.catalog else None)
    state = check_state(_read_json(args.state, "state", TokenFileError) if args.state else None, streams,
                        account_id=settings.account_id, list_ids=settings.list_ids, now=datetime.now(timezone.utc))
    return _sync(settings, start_date, selected, state, out)


def _sync(settings: Settings, start_date: str | None, selected: list[Any], state: dict[str, Any],
          out: IO[str]) -> int:
    """One run of the job (the refresh and the save as ``run`` does them) with the tap's task and state."""
    from job.commands.run import run_single
    from job.run.singer import MessageWriter, SingerState, tap_task
    from job.run.single import RunOptions
    from job.shutdown import Shutdown

    writer = MessageWriter(out)
    options = RunOptions(task=tap_task(selected, writer), task_origin="the tap", since=start_date)
    shutdown = Shutdown(settings.shutdown_grace_seconds)
    with shutdown.handling_signals():
        return run_single(settings, options, out, shutdown, task_state=SingerState(state, writer))


# -- config ------------------------------------------------------------------------------------------------


def read_config(path: Path) -> tuple[Settings, str | None]:
    """The settings the config file gives, built from it alone, and its start_date; ConfigError (78) naming
    each key at fault."""
    document = _read_json(str(path), "config", ConfigError)
    if not isinstance(document, dict):
        raise ConfigError([f"the config {path} must be a JSON object of settings"])
    problems: list[str] = []
    variables: dict[str, str] = {}
    start_date: str | None = None
    for key, value in document.items():
        if value is None:
            continue
        if key == "start_date":
            start_date = _start_date(value, problems)
        elif key in _NOT_TAP_SETTINGS:
            problems.append(f"{key} is a setting of aweber-job run, not of the tap")
        elif key not in _SETTINGS:
            problems.append(f"{key} is not a setting of the tap (aweber-job tap --about lists them)")
        else:
            text = _as_text(key, value, problems)
            if text is not None:
                variables["AWEBER_" + key.upper()] = text
    if not problems and "AWEBER_TOKEN_FILE" not in variables and "AWEBER_STORE" not in variables:
        problems.append("give token_file (the token file) or store (a PostgreSQL URL) and connection")
    if problems:
        raise ConfigError(problems)
    try:
        return load_settings(variables), start_date
    except ConfigError as exc:
        raise ConfigError([_config_words(problem) for problem in exc.problems]) from None


def _as_text(key: str, value: object, problems: list[str]) -> str | None:
    """A config value as the variable's text: strings as they are, numbers, and lists joined by commas."""
    kinds = "a string, a number or a list of them" if key in _LIST_SETTINGS else "a string or a number"
    if isinstance(value, (bool, dict)):
        problems.append(f"{key} must be {kinds}")
        return None
    if isinstance(value, list):
        if key not in _LIST_SETTINGS or not all(isinstance(item, (str, int)) and not isinstance(item, bool)
                                                for item in value):
            problems.append(f"{key} must be {kinds}")
            return None
        return ",".join(str(item) for item in value)
    return str(value)


def _start_date(value: object, problems: list[str]) -> str | None:
    """start_date: an RFC 3339 date and time (or a date), not in the future."""
    try:
        if not isinstance(value, str):
            raise ValueError
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        problems.append(f"start_date must be an RFC 3339 date and time such as 2026-11-01T00:00:00Z, got {value!r}")
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    if when > datetime.now(timezone.utc):
        problems.append(f"start_date {value} is in the future")
        return None
    if when.year < 1970:
        problems.append(f"start_date {value} is before 1970; no subscriber is that old")
        return None
    return when.astimezone(timezone.utc).isoformat()


def _config_words(problem: str) -> str:
    """A problem of load_settings in the config's words: AWEBER_CLIENT_ID -> client_id."""
    return re.sub(r"\bAWEBER_([A-Z_]+)\b", lambda match: match.group(1).lower(), problem)


def _read_json(path: str, what: str, error: type[JobError]) -> Any:
    """The JSON document at ``path``; ``error`` (its exit code) naming the file and why when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        message = f"cannot read the {what} {path}: {reason}"
        raise (ConfigError([message]) if error is ConfigError else error(message)) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        message = f"the {what} {path} is not JSON: {exc}"
        raise (ConfigError([message]) if error is ConfigError else error(message)) from None


# -- the catalog ---------------------------------------------------------------------------------------------


def catalog(streams: Mapping[str, Any]) -> dict[str, Any]:
    """The catalog --discover prints: each stream with its schema, keys, replication key and metadata."""
    entries = []
    for stream in streams.values():
        metadata: list[dict[str, Any]] = [{"breadcrumb": [], "metadata": {
            "inclusion": "available",
            "selected-by-default": True,
            "table-key-properties": list(stream.key_properties),
            "valid-replication-keys": [stream.replication_key] if stream.replication_key else [],
            "forced-replication-method": "INCREMENTAL" if stream.replication_key else "FULL_TABLE",
            "schema-name": stream.name,
        }}]
        for name in stream.properties:
            inclusion = "automatic" if name in stream.automatic else "available"
            metadata.append({"breadcrumb": ["properties", name],
                             "metadata": {"inclusion": inclusion, "selected-by-default": True}})
        entries.append({
            "tap_stream_id": stream.name,
            "stream": stream.name,
            "schema": stream.schema,
            "key_properties": list(stream.key_properties),
            "replication_key": stream.replication_key,
            "replication_method": "INCREMENTAL" if stream.replication_key else "FULL_TABLE",
            "metadata": metadata,
        })
    return {"streams": entries}


def select(streams: Mapping[str, Any], given: object) -> list[Any]:
    """The streams and fields a catalog selects (``selected`` metadata, as Meltano writes it; a node without
    it takes ``selected-by-default``, a field its stream's choice); every stream and field without a catalog.
    UsageError (64) naming a stream or field the tap does not have."""
    from job.run.singer import Selected

    if given is None:
        return [Selected(stream, tuple(stream.properties)) for stream in streams.values()]
    entries = given.get("streams") if isinstance(given, dict) else None
    if not isinstance(entries, list):
        raise UsageError("the catalog (--catalog) must be a JSON object with a list of streams")
    chosen = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UsageError("the catalog (--catalog): each stream must be an object")
        name = entry.get("tap_stream_id", entry.get("stream"))
        stream = streams.get(name) if isinstance(name, str) else None
        if stream is None:
            raise UsageError(f"the catalog (--catalog) names a stream {name!r} the tap does not have; "
                             f"its streams: {', '.join(streams)} (aweber-job tap --discover)")
        fields = _selected_fields(stream, entry)
        if fields is not None:
            chosen.append(Selected(stream, fields))
    return chosen


def _selected_fields(stream: Any, entry: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The fields of ``stream`` the catalog entry selects, or None when the stream is not selected."""
    metadata = entry.get("metadata", [])
    if not isinstance(metadata, list):
        raise UsageError(f"the catalog (--catalog): stream {stream.name}: metadata must be a list")
    nodes: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for item in metadata:
        breadcrumb = item.get("breadcrumb") if isinstance(item, dict) else None
        values = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(breadcrumb, list) or not isinstance(values, dict):
            raise UsageError(f"the catalog (--catalog): stream {stream.name}: each metadata entry needs a breadcrumb "
                             "and metadata")
        path = tuple(str(part) for part in breadcrumb)
        if path and (len(path) != 2 or path[0] != "properties" or path[1] not in stream.properties):
            raise UsageError(f"the catalog (--catalog): stream {stream.name} has no field {'.'.join(path[1:])!r}; "
                             f"its fields: {', '.join(stream.properties)}")
        nodes[path] = values
    schema = entry.get("schema", {})
    for name in schema.get("properties", {}) if isinstance(schema, dict) else ():
        if name not in stream.properties:
            raise UsageError(f"the catalog (--catalog): stream {stream.name} has no field {name!r}; "
                             f"its fields: {', '.join(stream.properties)}")
    if not _is_selected(nodes.get(()), default=bool(entry.get("selected", False))):
        return None
    return tuple(name for name in stream.properties
                 if name in stream.automatic or _is_selected(nodes.get(("properties", name)), default=True))


def _is_selected(values: Mapping[str, Any] | None, *, default: bool) -> bool:
    if values is None:
        return default
    if values.get("inclusion") == "unsupported":
        return False
    if "selected" in values:
        return values["selected"] is True
    return bool(values.get("selected-by-default", default))


# -- about ---------------------------------------------------------------------------------------------------


def about() -> dict[str, Any]:
    """What the tap is, as singer-sdk's ``--about --format json`` says it: name, version, capabilities, and
    its settings as a JSON Schema."""
    properties: dict[str, Any] = {}
    for key, meaning in _SETTINGS.items():
        if key in _INTEGER_SETTINGS:
            kind: Any = {"type": "integer"}
        elif key in _NUMBER_SETTINGS:
            kind = {"type": "number"}
        elif key == "list_ids":
            kind = {"type": ["array", "string"], "items": {"type": "integer"}}
        elif key == "start_date":
            kind = {"type": "string", "format": "date-time"}
        else:
            kind = {"type": "string"}
        properties[key] = {**kind, "description": meaning}
        if key in _SECRET_SETTINGS:
            properties[key].update(secret=True, writeOnly=True)
    return {
        "name": TAP_NAME,
        "description": "AWeber subscribers as a Singer tap, with the tokens kept by aweber-job",
        "version": __version__,
        "capabilities": list(CAPABILITIES),
        "settings": {"type": "object", "properties": properties},
    }


def about_text(fmt: str) -> str:
    """``--about`` as text (the default), JSON or Markdown."""
    info = about()
    if fmt == "json":
        return json.dumps(info, indent=2) + "\n"
    settings = info["settings"]["properties"]
    if fmt == "markdown":
        rows = "".join(f"| {key} | {value['description']} |\n" for key, value in settings.items())
        return (f"# {info['name']}\n\n{info['description']}\n\nVersion: {info['version']}\n\n## Capabilities\n\n"
                + "".join(f"- {cap}\n" for cap in info["capabilities"])
                + f"\n## Settings\n\n| setting | meaning |\n|---|---|\n{rows}")
    lines = [f"Name: {info['name']}", f"Version: {info['version']}",
             f"Capabilities: {', '.join(info['capabilities'])}", "Settings:"]
    lines += [f"  {key}: {value['description']}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
