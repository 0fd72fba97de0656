"""How manifests are written: the jinja2 environment of `gpunode.templates`, whose `yaml`
filter is the only way a value reaches a template (a JSON rendering, which is valid YAML;
the environment refuses to print anything else), and `dump_yaml` for objects built in code.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


class _YamlText(str):
    """Text the `yaml` filter produced: safe to place where a YAML value or key goes."""


# YAML (1.1 and 1.2) treats these as line breaks or refuses them in a document; JSON leaves
# them raw, so they are escaped on top of what json.dumps does.
_YAML_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def yaml_value(value: object) -> _YamlText:
    """The jinja2 `yaml` filter: any plain value as a one-line JSON document, which YAML reads
    back as exactly that value, whatever quotes, colons, hashes, braces or newlines it holds."""
    if not (value is None or isinstance(value, (str, bool, int, list, tuple, dict))):
        raise TypeError(f"refusing to render a {type(value).__name__} into a manifest")
    text = json.dumps(value, ensure_ascii=False)
    return _YamlText(_YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def _env_bool(value: bool) -> str:
    return "true" if value else "false"


def _finalize(value: object) -> object:
    # Called on every {{ ... }} output: anything that did not pass the yaml filter is a
    # template bug, caught here rather than shipped as a manifest that parses differently.
    if isinstance(value, _YamlText):
        return value
    raise TypeError(f"template printed {value!r} without the yaml filter")


def _load_template(name: str) -> str:
    return resources.files("gpunode.templates").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _environment() -> jinja2.Environment:
    # Built (and jinja2 imported) on first use: most gpunode commands render no manifest.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["yaml"] = yaml_value
    env.filters["envbool"] = _env_bool
    return env


def render_template(template: str, context: Mapping[str, Any]) -> str:
    return _environment().get_template(template).render(**context)


def dump_yaml(obj: dict[str, Any]) -> str:
    """One object as YAML; multi-line strings (a ConfigMap's configs) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value and value.endswith("\n") and not value[:1].isspace() else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    out: str = yaml.dump(obj, Dumper=Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return out
