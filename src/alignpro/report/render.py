"""The report's two renderings of one description: a list of blocks (headings, paragraphs, tables,
images, quoted texts) becomes Markdown (plots linked by relative path) or one self-contained HTML page
(plots inline). Each section of the report is described once, as blocks, and rendered by both.

Every text is escaped for its format, and control characters (model outputs can hold NUL and others)
are shown as `\\xNN` rather than written raw.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

# C0 and C1 control characters but tab and newline, and DEL.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}"
    # A table wider than the window scrolls within itself, not the whole page.
    "table{border-collapse:collapse;margin-bottom:1.5em;display:block;max-width:100%;overflow-x:auto}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f0f0f0}img{max-width:100%}"
    "blockquote.example{white-space:pre-wrap;border-left:3px solid #ccc;margin:.3em 0 .8em;padding-left:.8em}"
)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    """A plot: `link` is where the Markdown points (a relative path), `png` what the HTML embeds."""

    alt: str
    link: str
    png: bytes


@dataclass(frozen=True)
class Quote:
    """A labelled text quoted whole (an example's prompt, answer or judge's reason)."""

    label: str
    text: str


Block = Heading | Paragraph | Table | Image | Quote


def printable(text: str) -> str:
    """`text` with each control character but tab and newline written as `\\xNN`."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _markdown_cell(text: str) -> str:
    """Escape HTML (Markdown renders raw HTML) and pipes (they would split the table cell)."""
    return html.escape(printable(text), quote=False).replace("|", "\\|")


def _markdown_lines(block: Block) -> list[str]:
    """One block as Markdown lines, ending with the blank line that separates it from the next."""
    if isinstance(block, Heading):
        return [f"{'#' * block.level} {_markdown_cell(block.text)}", ""]
    if isinstance(block, Paragraph):
        return [printable(block.text), ""]
    if isinstance(block, Table):

        def line(cells) -> str:
            return "| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |"

        return [line(block.header), "|" + "---|" * len(block.header), *map(line, block.rows), ""]
    if isinstance(block, Image):
        return [f"![{block.alt}]({block.link})", ""]
    quoted = "\n".join(f"> {line}" for line in html.escape(printable(block.text), quote=False).splitlines() or [""])
    return [f"**{printable(block.label)}**", "", quoted, ""]


def markdown(blocks: list[Block]) -> str:
    """The blocks as one Markdown document."""
    return "\n".join(line for block in blocks for line in _markdown_lines(block))


def _escape(text: str) -> str:
    return html.escape(printable(text))


def _html_lines(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return [f"<h{block.level}>{_escape(block.text)}</h{block.level}>"]
    if isinstance(block, Paragraph):
        return [f"<p>{_escape(block.text)}</p>"]
    if isinstance(block, Table):
        cells = ["<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows]
        return ["<table>", "<tr>" + "".join(f"<th>{_escape(name)}</th>" for name in block.header) + "</tr>", *cells, "</table>"]
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return [f'<p><img alt="{_escape(block.alt)}" src="data:image/png;base64,{data}"></p>']
    return [f'<p><b>{_escape(block.label)}</b></p><blockquote class="example">{_escape(block.text)}</blockquote>']


def html_page(title: str, blocks: list[Block]) -> str:
    """The blocks as one self-contained HTML page: inline style, plots as base64 data URIs."""
    head = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_escape(title)}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
    ]
    return "\n".join([*head, *(line for block in blocks for line in _html_lines(block)), "</body></html>"])
