"""The one strict reader of config files: the default config/config.yaml and every ``--configfile``.

Snakemake reads config files with a lenient loader: of a key written twice it silently keeps the last
value, and it reports a YAML syntax error without file or line. The workflow reads every config file
with :func:`read_config_file` (workflow/rules/common.smk) before validating it, and every error it
raises starts with ``file:line:column``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .io import ConfigError


def _where(path, mark) -> str:
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


def _no_duplicate_keys(node, path, keys: list[str], seen_nodes: set) -> None:
    """Raise ConfigError at the second occurrence of a key in any mapping (YAML and JSON keep the last silently)."""
    if id(node) in seen_nodes:  # an alias met again
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, name) in first:
                    raise ConfigError(
                        f"{_where(path, key.start_mark)}: config key {'.'.join([*keys, name])}: duplicate key (first at "
                        f"line {first[key.tag, name]}); YAML would keep only the last one"
                    )
                first[key.tag, name] = key.start_mark.line + 1
            _no_duplicate_keys(value, path, [*keys, name], seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, path, [*keys, str(i)], seen_nodes)


def read_config_file(path: str | Path) -> dict:
    """The mapping in one config file, read strictly: UTF-8, one YAML document (JSON is YAML) of plain
    types, no key twice in a mapping. Every error starts with ``file:line:column``.

    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, line_start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}:{line}:{e.start - line_start + 1}: not UTF-8 "
            f"(byte 0x{raw[e.start]:02x}); save the file as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{path}:1:1: expected a mapping of config keys at the top level")
        _no_duplicate_keys(node, path, [], set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        raise ConfigError(f"{_where(path, mark)}: not valid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def read_config_files(paths) -> dict:
    """Read every config file strictly (:func:`read_config_file`) and merge them in order as Snakemake does
    (a later file's keys win, nested mappings merge); the first error is raised."""
    def merge(into: dict, new: dict) -> dict:
        for k, v in new.items():
            into[k] = merge(into[k], v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
        return into

    merged: dict = {}
    for path in paths:
        merge(merged, read_config_file(path))
    return merged
