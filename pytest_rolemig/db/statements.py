"""Split a SQL file into its statements, as psql does: at semicolons outside quotes, comments and bodies.

Used only to say which statement of a schema file failed when the server's error has no
position (a constraint violated by an ``INSERT``, an exception raised in a ``DO`` block):
the file is run again statement by statement, in a transaction rolled back at the end.
"""

from __future__ import annotations

import re

_DOLLAR = re.compile(r"\$([^\W\d]\w*)?\$")
_WORD = re.compile(r"[^\W\d]\w*(?:\$\w*)*")


def split_statements(text: str) -> list[tuple[int, str]]:
    """(offset of its first character, its text) of each statement, comments before it left out.

    Semicolons inside string literals, quoted identifiers, dollar-quoted bodies, comments,
    parentheses and ``BEGIN ATOMIC ... END`` bodies do not end a statement.
    """
    found: list[tuple[int, str]] = []
    start = i = depth = atomic = 0
    previous = ""
    n = len(text)

    def add(begin: int, end: int) -> None:
        first = begin
        while first < end:  # skip blanks and the comments before the statement
            if text[first].isspace():
                first += 1
            elif text.startswith("--", first):
                line_end = text.find("\n", first, end)
                first = end if line_end < 0 else line_end + 1
            elif text.startswith("/*", first):
                first = _block_comment_end(text, first)
            else:
                found.append((first, text[first:end]))
                return

    while i < n:
        c = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            i = _block_comment_end(text, i)
        elif c == "'":
            i = _string_end(text, i)
        elif c == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0 or not text.startswith('""', end):
                    break
                end += 2
            i = n if end < 0 else end + 1
        elif c == "$" and (match := _DOLLAR.match(text, i)) and not (i and (text[i - 1].isalnum()
                                                                          or text[i - 1] == "_")):
            end = text.find(match.group(0), match.end())
            i = n if end < 0 else end + len(match.group(0))
        elif c.isalpha() or c == "_":
            match = _WORD.match(text, i)
            word = match.group(0).upper() if match else c
            if atomic:
                atomic += 1 if word in ("BEGIN", "CASE") else -1 if word == "END" else 0
            elif word == "ATOMIC" and previous == "BEGIN":
                atomic = 1
            previous = word
            i = match.end() if match else i + 1
        else:
            if c == "(":
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
            elif c == ";" and not depth and not atomic:
                add(start, i)
                start, previous = i + 1, ""
            i += 1
    add(start, n)
    return found


def _block_comment_end(text: str, i: int) -> int:
    """Index after the (nested) block comment starting at ``i``."""
    nest, i, n = 1, i + 2, len(text)
    while i < n and nest:
        if text.startswith("/*", i):
            nest, i = nest + 1, i + 2
        elif text.startswith("*/", i):
            nest, i = nest - 1, i + 2
        else:
            i += 1
    return i


def _string_end(text: str, i: int) -> int:
    """Index after the string literal starting at ``i`` (``''`` is a quote; ``E''`` has backslash escapes)."""
    escapes = i > 0 and text[i - 1] in "eE" and not (i > 1 and (text[i - 2].isalnum() or text[i - 2] == "_"))
    i, n = i + 1, len(text)
    while i < n:
        if escapes and text[i] == "\\":
            i += 2
        elif text[i] == "'":
            if not text.startswith("''", i):
                return i + 1
            i += 2
        else:
            i += 1
    return n
