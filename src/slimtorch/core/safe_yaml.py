"""The one YAML reader for user text (recipes, ``--set`` values): plain data only, bounded in size.

``yaml.safe_load`` already refuses ``!!python`` tags, but it expands aliases: a 349-byte recipe whose
``observer_kwargs`` nested ``&a [*b, *b, ...]`` anchors nine deep became a 4.7 MB ``recipe.yaml`` (36 s,
625 MB) before any check ran ("billion laughs"). A recipe never needs an alias, so this loader refuses
every anchor (``&name``) and alias (``*name``), merge keys included (they are aliases), before a node is
built. It also refuses text over :data:`MAX_YAML_BYTES` before parsing, and nesting deeper than
:data:`MAX_DEPTH` (Python's recursion limit would otherwise end the parse with a ``RecursionError``).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent

from slimtorch.core.errors import SlimtorchError

#: Largest YAML text read (1 MiB): a recipe is a few hundred bytes, a long one a few KB.
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings and lists accepted.
MAX_DEPTH = 64


class YAMLRefused(SlimtorchError):
    """YAML text this loader will not read (an alias or anchor, too large, too deep, malformed)."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


class _PlainLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses anchors and aliases and limits nesting, as each event is composed."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise YAMLRefused(
                f"YAML alias *{event.anchor} at {_where(event.start_mark)}: aliases and anchors are not "
                "allowed (they can expand a small file into gigabytes); write the value out in full"
            )
        if isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.anchor is not None:
            raise YAMLRefused(
                f"YAML anchor &{event.anchor} at {_where(event.start_mark)}: aliases and anchors are not "
                "allowed (they can expand a small file into gigabytes); write the value out in full"
            )
        if isinstance(event, CollectionStartEvent):
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise YAMLRefused(f"YAML nested deeper than {MAX_DEPTH} levels at {_where(event.start_mark)}")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


def load_yaml(text: str | bytes, source: str = "YAML text", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse YAML ``text`` into plain data (dicts, lists, str, int, float, bool, None).

    Args:
        text: the YAML document.
        source: what the text is (``"recipe.yaml"``, ``"--set observer_kwargs=..."``), named in errors.
        max_bytes: refuse longer text before parsing it.

    Raises:
        YAMLRefused: text over ``max_bytes``; an anchor or alias; nesting over :data:`MAX_DEPTH`;
            malformed YAML (with line and column) or a tag that is not plain data (``!!python/...``).
    """
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise YAMLRefused(f"{source} is {size} bytes; YAML input is limited to {max_bytes} bytes")
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - _PlainLoader is a SafeLoader
    except YAMLRefused as e:
        raise YAMLRefused(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx = getattr(e, "context", None)
        where = f"{source}: malformed YAML at {_where(mark)}: {what}"
        raise YAMLRefused(where + (f" ({ctx})" if ctx else "")) from None
    except (RecursionError, ValueError, TypeError) as e:  # odd input some yaml constructors choke on
        raise YAMLRefused(f"{source}: malformed YAML: {type(e).__name__}: {e}") from None
