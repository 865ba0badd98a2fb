"""The regular-expression terminals of a Lark grammar (`/.../flags`), for checks llguidance skips.

llguidance accepts a regex terminal that can match the empty string (`/a*/`), and a recursive
rule over one (`start: /a*/ start`) makes its mask computation loop forever inside native code,
allocating as it goes: one request would hang the engine thread. Lark itself refuses zero-width
terminals; we refuse them the same way (`GrammarCompiler.check`). This scanner finds the regex
literals, skipping string literals, `//` comments and `%json {...}` blocks.
"""

from __future__ import annotations


def regex_terminals(lark: str) -> list[str]:
    """Each `/.../flags` literal of `lark`, as written (slashes and flags included)."""
    found, i, n = [], 0, len(lark)
    while i < n:
        c = lark[i]
        if c == '"':
            i = _skip_string(lark, i)
        elif lark.startswith("//", i):
            end = lark.find("\n", i)
            i = n if end < 0 else end
        elif lark.startswith("%json", i):
            i = _skip_braces(lark, lark.find("{", i)) if "{" in lark[i:] else n
        elif c == "/":
            end = i + 1
            while end < n and lark[end] != "/" and lark[end] != "\n":
                end += 2 if lark[end] == "\\" else 1
            end += 1
            while end < n and lark[end].isalpha():
                end += 1
            found.append(lark[i:end])
            i = end
        else:
            i += 1
    return found


def _skip_string(text: str, i: int) -> int:
    i += 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _skip_braces(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        if text[i] == '"':
            i = _skip_string(text, i)
            continue
        depth += text[i] == "{"
        depth -= text[i] == "}"
        i += 1
        if depth == 0:
            return i
    return i
