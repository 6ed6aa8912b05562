"""Block-structured configuration: ``name arg... ;`` or ``name arg... { ... }`` (nginx; Caddyfile with newlines).

Quotes group words, ``#`` starts a comment, ``{``/``}`` open and close blocks (but ``{name}`` inside a word is
a placeholder: nginx ``${host}``, Caddy ``{env.ROOT}``); a directive ends at ``;`` (nginx) or at the end of its
line (Caddyfile, ``newlines=True``). Nothing is interpreted here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Directive", "parse_blocks"]

_TOKEN = re.compile(
    r"""[ \t\r\f\v]+|(\n)|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|`([^`]*)`"""
    r"""|((?:[^\s{};"'`\\]|\\.|\{[^\s{};]+\})+)|([{};])"""
)
_MAX_DEPTH = 64


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None


def _tokens(text: str, newlines: bool) -> list[str]:
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        newline, double, single, backquoted, word, punct = match.groups()
        if newline is not None:
            if newlines:
                out.append(";")
        elif punct is not None:
            out.append(punct)
        else:
            for value in (double, single, backquoted, word):
                if value is not None:
                    out.append(value)
                    break
    return out


def _parse(tokens: list[str], position: int, depth: int) -> tuple[list[Directive], int]:
    directives: list[Directive] = []
    words: list[str] = []
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == ";":
            if words:
                directives.append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if depth > _MAX_DEPTH:
                raise ValueError("blocks nested too deep")
            block, position = _parse(tokens, position, depth + 1)
            directives.append(Directive(words[0] if words else "", words[1:], block))
            words = []
        elif token == "}":
            if words:
                directives.append(Directive(words[0], words[1:]))
            return directives, position
        else:
            words.append(token)
    if words:
        directives.append(Directive(words[0], words[1:]))
    return directives, position


def parse_blocks(text: str, newlines: bool = False) -> list[Directive]:
    """The directives of ``text``; ``ValueError`` when blocks nest too deep."""
    return _parse(_tokens(text, newlines), 0, 0)[0]
