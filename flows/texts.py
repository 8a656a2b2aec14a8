"""Every sentence a person reads comes from a Jinja2 template under ``templates/<locale>/``."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent / "templates"


class _Environment(Environment):
    """An environment whose globals never change once templates are loaded.

    Each template's globals are then a plain dict instead of Jinja2's ``ChainMap`` over the
    environment's (kept live for globals added later), which it iterates key by key for every
    render and every ``include``: about a third of the time of a short text.
    """

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


class Texts:
    """Renders chat text templates (``name`` without the ``.j2`` suffix), zh_CN first."""

    def __init__(self, root: Path = TEMPLATE_ROOT, locale: str = "zh_CN") -> None:
        # Templates ship with the code: compiled once, never checked for changes on disk (a
        # check is a stat() per template per message).
        self.env = _Environment(
            auto_reload=False,
            loader=FileSystemLoader([str(root / locale), str(root / "zh_CN")]),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self._templates: dict[str, Template] = {}
        self._globals = dict(self.env.globals)

    def render(self, name: str, **values: Any) -> str:
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self.env.get_template(f"{name}.j2")
        # Template.render() without its per-call copy of the globals through a ChainMap (half
        # of the cost of a short text): the values are merged into a plain dict of them.
        context = template.new_context({**self._globals, **values}, shared=True)
        try:
            return self.env.concat(template.root_render_func(context)).strip()
        except Exception:
            self.env.handle_exception()  # re-raised with the template's file and line

    def exists(self, name: str) -> bool:
        try:
            self.env.get_template(f"{name}.j2")
        except Exception:  # jinja2.TemplateNotFound and syntax errors alike mean "not usable"
            return False
        return True
